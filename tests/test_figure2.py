"""experiments.report.figure2: every curve is inside its panel or named in it."""

import itertools

import matplotlib.pyplot as plt
import numpy as np

from experiments import report

STEPS = [500 * (e + 1) for e in range(10)]  # 10 epochs of 500 batches of 100


def _run(valid, train):
    return [{"curve_steps": STEPS, "curve_valid_elbo": valid, "curve_train_elbo": train}]


def _fake_runs():
    rising = np.linspace(-170.0, -120.0, len(STEPS))
    return {
        "elbo_L3": _run(list(rising - 20), list(rising - 18)),
        # all far below the others, as wake-sleep at N_z = 3 (test ELBO -2.4e5)
        "wake_sleep_L3": _run(list(np.linspace(-3e5, -2.4e5, 10)), [None] * 9 + [-2.5e5]),
        "elbo_L20": _run(list(rising), list(rising + 1)),
        # starts far below, ends inside
        "wake_sleep_L20": _run(list(np.linspace(-900.0, -150.0, 10)), list(rising - 30)),
    }


def test_every_curve_is_inside_its_panel_or_named_there():
    fig = report.figure2(_fake_runs(), batch_size=100)
    try:
        axes = fig.get_axes()
        assert [ax.get_title() for ax in axes] == ["N_z = 3", "N_z = 20"]
        named = 0
        for ax in axes:
            low, high = ax.get_ylim()
            notes = " ".join(t.get_text() for t in ax.texts)
            lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
            assert len(lines) == 4
            for line in lines:
                y = np.asarray(line.get_ydata(), dtype=float)
                y = y[np.isfinite(y)]
                if np.all((low <= y) & (y <= high)):
                    continue
                assert line.get_label() in notes, (ax.get_title(), line.get_label(), notes)
                assert f"min {y.min():.4g}" in notes
                named += 1
            # the AEVB curves are not squashed flat by an off-range curve
            assert high - low < 2 * report.FIGURE2_WINDOW_NATS
        assert named == 3  # both wake-sleep curves at N_z = 3, the valid one at N_z = 20

        # x tick labels are readable: present and pairwise apart
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in axes:
            ticks = ax.get_xticklabels() + ax.get_xticklabels(minor=True)
            left, right = ax.get_xlim()
            labels = [
                t
                for t in ticks
                if t.get_visible() and t.get_text() and left <= t.get_position()[0] <= right
            ]
            assert len(labels) >= 2
            boxes = [t.get_window_extent(renderer) for t in labels]
            for a, b in itertools.combinations(boxes, 2):
                assert not a.overlaps(b), [t.get_text() for t in labels]
    finally:
        plt.close(fig)


def test_ticks_cover_the_range_without_crowding():
    assert report._figure2_ticks(5e4, 5e5) == [5e4, 1e5, 2e5, 5e5]
    assert report._figure2_ticks(1e5, 1e8) == [1e5, 1e6, 1e7, 1e8]
    assert [report._count_label(t) for t in (5e4, 1e5, 2.5e6)] == ["50k", "100k", "2.5M"]
