"""Flow-matching sampler: sigma schedule, Euler and Heun on an exactly known velocity field, options."""
import pytest
import torch

from baton_fast.model.sampler import CudaGraphVelocity, SamplerOptions, flow_sigmas, sample


def test_flow_sigmas_shift():
    sigmas = flow_sigmas(10, 5.0)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (11,)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0 and (sigmas[1:] < sigmas[:-1]).all()
    s = 0.3  # the unshifted level of step 7 of 10
    assert torch.isclose(sigmas[7], torch.tensor(5 * s / (1 + 4 * s), dtype=torch.float64))
    assert torch.allclose(flow_sigmas(4, 1.0), torch.linspace(1, 0, 5, dtype=torch.float64))


class PointMassVelocity:
    """Exact flow-matching velocity when the data is a single point ``x0``: ``v = (x - x0) / sigma``.
    Both solvers must land exactly on ``x0`` (the path is a straight line)."""

    def __init__(self, video_x0, audio_x0):
        self.x0 = (video_x0, audio_x0)
        self.levels = []

    def __call__(self, video, audio, sigma):
        self.levels.append(float(sigma))
        return tuple((x - x0) / sigma for x, x0 in zip((video, audio), self.x0))


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_solvers_are_exact_on_a_straight_path(solver):
    g = torch.Generator().manual_seed(0)
    x0 = (torch.randn(1, 3, 2, 4, 4, generator=g), torch.randn(1, 6, 3, generator=g))
    noise = (torch.randn(1, 3, 2, 4, 4, generator=g), torch.randn(1, 6, 3, generator=g))
    velocity = PointMassVelocity(*x0)
    options = SamplerOptions(steps=6, solver=solver, progress=False)
    steps_seen = []
    video, audio = sample(velocity, *noise, options, on_step=steps_seen.append)
    assert torch.allclose(video, x0[0], atol=1e-5) and torch.allclose(audio, x0[1], atol=1e-5)
    assert steps_seen == list(range(6))
    assert len(velocity.levels) == options.evaluations == (6 if solver == "euler" else 11)
    assert velocity.levels[0] == 1.0 and 0.0 not in velocity.levels


def test_heun_is_second_order_on_a_curved_field():
    """dx/dsigma = x  =>  x(0) = x(1) * exp(-1); Heun's error is far below Euler's."""
    x1 = torch.ones(1, 1, 1, 1, 1)

    def velocity(video, audio, sigma):
        return video, audio

    errors = {}
    for solver in ("euler", "heun"):
        options = SamplerOptions(steps=20, solver=solver, shift=1.0, progress=False)
        video, _ = sample(velocity, x1, torch.ones(1, 1, 1), options)
        errors[solver] = abs(video.item() - torch.exp(torch.tensor(-1.0)).item())
    assert errors["heun"] < errors["euler"] / 10


def test_options_validation():
    for kwargs, name in (({"steps": 0}, "steps"), ({"solver": "rk4"}, "solver"), ({"shift": 0.0}, "shift"),
                         ({"video_guidance": float("nan")}, "video_guidance")):
        with pytest.raises(ValueError, match=name):
            SamplerOptions(**kwargs)


def test_cuda_graph_needs_cuda():
    x = torch.zeros(1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="cuda_graph"):
        CudaGraphVelocity(lambda v, a, s: (v, a), x, torch.zeros(1, 1, 1), torch.tensor(1.0))
    with pytest.raises(ValueError, match="cuda_graph"):
        sample(lambda v, a, s: (v, a), x, torch.zeros(1, 1, 1), SamplerOptions(steps=1, cuda_graph=True,
                                                                                progress=False))
