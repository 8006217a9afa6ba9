"""The one training loop: resuming equals an uninterrupted run, and a resumed run's log holds
the whole loss history."""

from __future__ import annotations

import torch

from NeuroADLib.training.loop import LoopSettings, run_training


def _train(folder, steps):
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 1)
    optimiser = torch.optim.SGD(module.parameters(), lr=0.1)

    def step(number, rng, generator):
        x = torch.randn(4, 3, generator=generator)
        loss = (module(x) - 1.0).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return {"mse": loss.item()}

    lines = []
    history = run_training(folder, {"linear": module}, {"sgd": optimiser}, step,
                           LoopSettings(steps, seed=1, checkpoint_every=2, log_every=1),
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
