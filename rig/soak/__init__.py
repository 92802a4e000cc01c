"""Soak campaigns: overnight cycles across a fault matrix, as data and a dry-run plan.

``load_campaign("configs/campaigns/nightly.yaml")`` reads and checks a campaign file
(:mod:`rig.soak.campaign`); ``plan(campaign)`` expands it, with no hardware touched
(:mod:`rig.soak.plan`): the case of every (terminal, cycle index), chunks, an estimate.
"""

from .campaign import (
    AwaitSignon,
    Campaign,
    Case,
    Health,
    Matrix,
    PowerCycle,
    RobotHome,
    Sales,
    Settle,
    Stop,
    Wait,
    load_campaign,
    load_campaigns,
)
from .plan import Chunk, Estimate, Plan, PlannedCase, PlannedCycle, plan

__all__ = [
    "AwaitSignon", "Campaign", "Case", "Chunk", "Estimate", "Health", "Matrix", "Plan",
    "PlannedCase", "PlannedCycle", "PowerCycle", "RobotHome", "Sales", "Settle", "Stop", "Wait",
    "load_campaign", "load_campaigns", "plan",
]
