"""The one training loop: resuming equals an uninterrupted run, a resumed run's log holds
the whole loss history, the moving average of the weights follows its closed form, and a
SIGTERM stops a run after its step with that step checkpointed."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from NeuroADLib.errors import EXIT_CANCELLED, Cancelled
from NeuroADLib.training.loop import LoopSettings, cosine_decay, run_training


def _train(folder, steps, ema_decay=0.0, trajectory=None, terminate_at=None):
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 1)
    optimiser = torch.optim.SGD(module.parameters(), lr=0.1)

    def step(number, rng, generator):
        x = torch.randn(4, 3, generator=generator)
        loss = (module(x) - 1.0).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if trajectory is not None:
            trajectory.append(module.weight.detach().clone())
        if number == terminate_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"mse": loss.item()}

    lines = []
    history = run_training(folder, {"linear": module}, {"sgd": optimiser}, step,
                           LoopSettings(steps, seed=1, checkpoint_every=2, log_every=1,
                                        ema_decay=ema_decay),
                           lines.append)
    return module, history, lines


def test_a_resumed_run_equals_an_uninterrupted_one_and_logs_its_whole_history(tmp_path):
    _train(tmp_path / "parts", 4)
    resumed, history, lines = _train(tmp_path / "parts", 6)
    direct, direct_history, direct_lines = _train(tmp_path / "direct", 6)
    assert torch.equal(resumed.weight, direct.weight)
    assert history == direct_history
    assert [line for line in lines if "(checkpoint)" in line] == [
        line.split("  ")[0] + "  " + line.split("  ")[1] + "  (checkpoint)"
        for line in direct_lines[:4]]
    assert "resumed at step 4" in lines


def test_the_moving_average_follows_its_closed_form_and_resumes_exactly(tmp_path):
    trajectory = []
    averaged, _, _ = _train(tmp_path / "direct", 6, ema_decay=0.9, trajectory=trajectory)
    expected = trajectory[0]
    for weight in trajectory[1:]:  # W_ema <- 0.9 W_ema + 0.1 W, starting from the first step
        expected = 0.9 * expected + 0.1 * weight
    assert torch.allclose(averaged.weight, expected, atol=1e-6)
    assert not torch.allclose(averaged.weight, trajectory[-1], atol=1e-4)

    _train(tmp_path / "parts", 4, ema_decay=0.9)
    resumed, _, _ = _train(tmp_path / "parts", 6, ema_decay=0.9)
    assert torch.equal(resumed.weight, averaged.weight)
    last, _, _ = _train(tmp_path / "parts", 6)  # without the average: the raw last weights
    assert torch.equal(last.weight, trajectory[-1])


def test_a_run_without_an_average_cannot_be_resumed_with_one(tmp_path):
    _train(tmp_path, 2)
    with pytest.raises(FileNotFoundError, match="without ema_decay"):
        _train(tmp_path, 4, ema_decay=0.9)
    with pytest.raises(ValueError, match="ema_decay"):
        _train(tmp_path / "bad", 2, ema_decay=1.0)


def test_a_sigterm_stops_after_its_step_checkpointed_and_the_run_resumes_exactly(tmp_path):
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Cancelled, match="stopped at step 4 of 7") as stopped:
        _train(tmp_path / "parts", 7, terminate_at=3)  # between the checkpoints at 2 and 6
    assert stopped.value.exit_code == EXIT_CANCELLED
    assert signal.getsignal(signal.SIGTERM) is handler
    state = json.loads((tmp_path / "parts" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4 and len(state["history"]) == 4
    resumed, history, lines = _train(tmp_path / "parts", 7)
    direct, direct_history, _ = _train(tmp_path / "direct", 7)
    assert "resumed at step 4" in lines
    assert torch.equal(resumed.weight, direct.weight)
    assert history == direct_history


def test_the_cosine_decay_matches_torchs_cosine_annealing_after_its_start():
    base, start, steps = 3e-4, 6, 16
    optimiser = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps - start)
    expected = [base] * start
    for _ in range(start, steps + 1):
        expected.append(optimiser.param_groups[0]["lr"])
        optimiser.step()
        scheduler.step()
    rates = [cosine_decay(step, base, start, steps) for step in range(steps + 1)]
    assert rates == pytest.approx(expected, abs=1e-12)
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)
    assert {cosine_decay(step, base, None, steps) for step in range(steps)} == {base}
