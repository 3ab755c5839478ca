"The probability-flow likelihood of dmlearn.difftime: closed forms, Heun's order, Hutchinson's unbiasedness, dequantisation."
import math
import pytest
import torch
from dmlearn.gmm import GMM, get_gmm
from dmlearn.difftime import likelihood_grid, pf_ode_field, ode_log_prob, dequantize, dequant_sigma, bits_per_dim, isotropic_log_prob

RING = get_gmm('ring')


def test_gaussian_data_closed_form():
    # one Gaussian component: the denoiser is linear, ∇·D = tr Σ(Σ + σ²I)⁻¹, and the flow is exact in closed form
    S = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
    gm = GMM(torch.ones(1), torch.tensor([[0.3, -0.2]], dtype=torch.float64), S[None])
    x = gm.sample(64, torch.Generator().manual_seed(0))
    f, div = pf_ode_field(gm, x, 0.8)
    A = torch.linalg.solve(S + 0.64 * torch.eye(2, dtype=torch.float64), S)
    torch.testing.assert_close(div, (2 - torch.trace(A)).expand(64) / 0.8)
    e = [(ode_log_prob(gm, x, likelihood_grid(n, 20.), prior=gm.noised(20.)).log_p - gm.log_prob(x, 0.002)).abs().max().item()
         for n in (64, 128)]
    assert e[1] < 0.01 and 1.7 < math.log2(e[0] / e[1]) < 2.7, e      # exact up to Heun's error, which halves twice per halving


def test_heun_second_order_on_the_ring():
    x = RING.sample(128, torch.Generator().manual_seed(1))
    ref = RING.log_prob(x, 0.002)
    err = [(ode_log_prob(RING, x, likelihood_grid(n, 80.), prior=RING.noised(80.)).log_p - ref).abs().mean().item() for n in (16, 32, 64)]
    orders = [math.log2(err[0] / err[1]), math.log2(err[1] / err[2])]
    assert all(1.7 < o < 2.7 for o in orders), (err, orders)


def test_textbook_start_is_the_default_and_exact_at_large_sigma():
    x = RING.sample(64, torch.Generator().manual_seed(2))
    g = likelihood_grid(48, 80.)
    a = ode_log_prob(RING, x, g)
    b = ode_log_prob(RING, x, g, prior=RING.noised(80.))
    torch.testing.assert_close(a.delta, b.delta)
    torch.testing.assert_close(a.log_p - a.delta, isotropic_log_prob(a.x_T, 80.))
    assert (a.log_p - b.log_p).abs().max() < 1e-3           # N(0, 80² I) is nearly p_80 for the ring
    assert a.nfe == 2 * 48


def test_hutchinson_is_unbiased():
    x = RING.sample(32, torch.Generator().manual_seed(3))
    _, exact = pf_ode_field(RING, x, 0.5)
    g = torch.Generator().manual_seed(4)
    probes = torch.randint(0, 2, (2000, 32, 2), generator=g).double() * 2 - 1
    _, est = pf_ode_field(RING, x, 0.5, probes)
    assert (est - exact).abs().max() < 0.1 * exact.abs().max()
    # one probe is noisy but unbiased: its error changes sign across probes
    one = torch.stack([pf_ode_field(RING, x, 0.5, probes[k:k + 1])[1] for k in range(50)])
    assert (one - exact).std() > 0


def test_record_and_nodes():
    g = likelihood_grid(10, 20., nodes=[0.5, 2.])
    assert g[0].item() == pytest.approx(0.002) and g[-1].item() == 20. and (g.diff() > 0).all()
    assert 0.5 in g.tolist() and 2. in g.tolist()
    x = RING.sample(16, torch.Generator().manual_seed(5))
    out = ode_log_prob(RING, x, g, record=[0.5, 2., 20.])
    assert set(out.at) == {0.5, 2., 20.}
    torch.testing.assert_close(out.at[20.][0], out.x_T); torch.testing.assert_close(out.at[20.][1], out.delta)
    part = ode_log_prob(RING, x, g[g <= 2.])                  # integrating only up to 2 gives the recorded state at 2
    torch.testing.assert_close(part.x_T, out.at[2.][0]); torch.testing.assert_close(part.delta, out.at[2.][1])


def test_dequantize_and_bits():
    x = (torch.randint(0, 256, (2000, 1, 2, 2)).double() / 127.5 - 1).float()
    y = dequantize(x, 256, torch.Generator().manual_seed(0))
    d = (y - x).double()
    assert d.abs().max() <= 1 / 255 + 1e-6 and abs(d.mean().item()) < 1e-4      # centred bins of width 2/255
    assert abs(d.std().item() - dequant_sigma(256)) < 1e-4
    assert torch.equal(((y.double() + 1) * 127.5).round(), ((x.double() + 1) * 127.5).round())   # rounding gives the data back
    # the uniform density over the data's range [-1 - Δ/2, 1 + Δ/2]^d is log2(levels) bits per dimension, whatever d is
    for levels, dim in ((17, 64), (256, 784)):
        lp = torch.tensor([-dim * math.log(2 + 2 / (levels - 1))])
        assert bits_per_dim(lp, dim, levels).item() == pytest.approx(math.log2(levels))
    with pytest.raises(ValueError, match='not on a grid of 256'): dequantize(x + 0.001, 256)
