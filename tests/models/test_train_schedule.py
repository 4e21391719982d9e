"""Resuming a one-cycle schedule from a checkpoint, with the same or a changed cycle length."""

import torch

from medassist.models.train import one_cycle, resume_schedule


def _schedule(epochs: int, steps_done: int = 0):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=0.002)
    sched = one_cycle(opt, {"epochs": epochs, "learning_rate": 0.002}, 10)
    for _ in range(steps_done):
        opt.step()
        sched.step()
    return sched, param


def test_same_length_continues_exactly():
    saved, _ = _schedule(11, 23)
    fresh, _ = _schedule(11)
    resume_schedule(fresh, saved.state_dict(), 23)
    assert fresh.get_last_lr() == saved.get_last_lr()


def test_changed_length_is_replanned_at_the_current_step_without_touching_weights():
    saved, _ = _schedule(11, 23)
    shorter, param = _schedule(8)
    resume_schedule(shorter, saved.state_dict(), 23)
    reference, _ = _schedule(8, 23)
    assert shorter.last_epoch == 23 and shorter.total_steps == 80
    assert shorter.get_last_lr() == reference.get_last_lr() != saved.get_last_lr()
    assert torch.equal(param, torch.zeros(1))
