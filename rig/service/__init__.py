"""The rig service (``rig serve``): one process per lab and host that owns the hardware and
serves the notebook API to clients over loopback HTTP (:mod:`rig.client`)."""
