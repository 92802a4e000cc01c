"""Plots return Figures and show nothing; result objects render readably in a notebook."""

from __future__ import annotations

import io

import pytest

from rig.analysis import plots
from rig.analysis.load import load_run
from rig.analysis.metrics import SignOn
from rig.analysis.sale_metrics import SaleResult
from rig.analysis.synth import synth_run
from rig.timeline.store import Store
from tests.unit.test_analysis_store import write_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plots")
    store = Store(tmp / "lab.db")
    rid, _ = write_run(store, synth_run(cycles=200, terminals=2, p_fault=0.2, p_refused=0.05,
                                        seed=12), "fw-plot")
    store.close()
    return load_run(tmp / "lab.db", rid)


def test_every_plot_is_a_figure_and_nothing_is_shown(run):
    from matplotlib.figure import Figure

    pyplot = pytest.importorskip("matplotlib.pyplot")
    before = pyplot.get_fignums()
    faulted = int(run.cycles[run.cycles["fault_case"] != "none"]["cycle_id"].iloc[0])
    sale = int(run.cycles[run.cycles["kind"] == "sale"]["cycle_id"].iloc[0])
    made = [run.plot.ecdf("ready_s", by="fault_case"), run.plot.hist("boot_s", by="terminal"),
            run.plot.trend("ready_s"), run.plot.success(by="fault_case"),
            run.plot.timeline(faulted), run.plot.timeline(sale),
            plots.ecdf({"A": run, "B": run.cycles}, "boot_s")]
    for fig in made:
        assert isinstance(fig, Figure)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")  # saved only when asked
        assert buf.getvalue()[:4] == b"\x89PNG"
    assert pyplot.get_fignums() == before  # none registered with pyplot: none shown
    tl = made[4]
    labels = [t.get_text() for t in tl.axes[0].get_yticklabels()]
    assert "power_on" in labels and "ready" in labels
    assert "no current trace recorded" in " ".join(t.get_text() for t in tl.axes[1].texts)
    with pytest.raises(KeyError):
        run.plot.timeline(10**9)


def test_notebook_displays(run):
    s = SignOn("T1", 3, True, 0.7, 0.76, 0.002, 0.772, 1)
    h = s._repr_html_()
    assert "signed on" in h and "700.0 ms" in h and "ready_s" in h
    bad = SignOn("T1", 4, False, error="no READY <timeout>")
    assert "&lt;timeout&gt;" in bad._repr_html_()
    r = SaleResult("T1", "cup_debit", "chip", 100, "approved", rc="00", card_to_auth_s=0.13)
    assert "approved" in r._repr_html_() and "130.0 ms" in r._repr_html_()
    assert "run " in run._repr_html_() and "fw-plot" in run._repr_html_()
    summ = run.summary(by="terminal", n_boot=200)
    assert "success rates" in summ._repr_html_()
    assert len(run.failures(by="terminal")) > 0
