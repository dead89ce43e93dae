"""The trainers under a model class (bilevel.rl.model_param) against independent computations.

    members        every logit vector z maps to a floored model of the class (ClassBlocks.distance);
                   z = 0 maps to the centre (the equal mixture of each block's atoms)
    tabular        ClassLogits on the tabular class's blocks equals TabularLogits, the trainers'
                   model before classes: model, pullback and count_fit
    pullback       dF/dz for F(z) = sum G * model(z), against central finite differences
    count_fit      aggregated, floor 0 and no prior: each state's row is its group's pooled
                   empirical row; linear: the KL fit of the pseudo-counts, by CVXPY
    torch          torch_model = model, and its autograd gradient = pullback
    runs           trained on aggregated_trap, the records name the class and their models lie in
                   it; verify checks them against the class's equilibria and refuses equilibria of
                   another class (exit 2, one line)
"""
import json
import subprocess
import sys

import cvxpy as cp
import numpy as np
import pytest

from bilevel.mdp import load_mdp
from bilevel.mdp.garnet import garnet
from bilevel.mdp.model import with_model_class
from bilevel.mdp.model_class import TABULAR, ModelClass, compile_class
from bilevel.rl.inner_outer import TrainConfig, train_inner_outer
from bilevel.rl.model_param import ClassLogits, TabularLogits, model_param
from conftest import MDPS, ROOT
from test_model_classes import random_basis, random_partition

TRAP = MDPS / "aggregated_trap.yaml"


def class_mdp(kind, seed, eta=1e-3):
    rng = np.random.default_rng(300 + seed)
    S, A = 6 + seed % 2, 2 + seed % 2
    base = garnet(S, A, 2 + seed % 2, seed=seed, support="true").with_(floor=eta)
    if kind == "aggregated":
        cls = ModelClass("aggregated", partition=random_partition(S, rng))
    else:
        cls = ModelClass("linear", basis=random_basis(base.P, rng), names=("k0", "k1", "k2", "k3"))
    return with_model_class(base, cls), rng


def random_logits(param, rng, scale=2.0):
    return scale * rng.standard_normal(param.shape)


@pytest.mark.parametrize("kind", ["aggregated", "linear"])
@pytest.mark.parametrize("seed", range(3))
def test_every_logit_is_a_member_and_zero_the_centre(kind, seed):
    mdp, rng = class_mdp(kind, seed)
    param = model_param(mdp)
    assert isinstance(param, ClassLogits)
    blocks = mdp.model_blocks
    for _ in range(3):
        Phat = param.model(random_logits(param, rng, 5.0))
        assert blocks.distance(Phat) < 1e-12
        np.testing.assert_allclose(Phat.sum(axis=-1), 1.0, atol=1e-12)
        assert np.all(Phat[~mdp.K] == 0.0)
    centre = blocks.lift([np.full(b.n_atoms, 1.0 / b.n_atoms) for b in blocks.blocks])
    np.testing.assert_allclose(param.model(param.init()), centre, atol=1e-15)


@pytest.mark.parametrize("seed", range(3))
def test_tabular_blocks_are_the_tabular_logits(seed):
    """The class parametrization on the tabular class's blocks (one block per pair, unit atoms on
    K(s,a)) is the per-pair softmax the trainers used before classes; logits are mapped between
    the two layouts (block b = pair (s,a), atom k = the k-th state of K(s,a))."""
    rng = np.random.default_rng(seed)
    mdp = garnet(5, 3, 3, seed=seed, support="all" if seed % 2 else "true").with_(floor=1e-3)
    tab = TabularLogits(mdp.K, mdp.floor)
    cls = ClassLogits(compile_class(TABULAR, mdp.K, mdp.terminal, mdp.floor))
    z_tab = np.where(mdp.K, random_logits(tab, rng), 0.0)
    z_cls = np.zeros(cls.shape)
    for i, b in enumerate(cls.blocks.blocks):
        (s, a), = b.pairs
        z_cls[i, :len(b.targets)] = z_tab[s, a, b.targets]
    np.testing.assert_allclose(cls.model(z_cls), tab.model(z_tab), atol=1e-14)
    G = rng.standard_normal(mdp.K.shape)
    g_tab, g_cls = tab.pullback(G, z_tab), cls.pullback(G, z_cls)
    for i, b in enumerate(cls.blocks.blocks):
        (s, a), = b.pairs
        np.testing.assert_allclose(g_cls[i, :len(b.targets)], g_tab[s, a, b.targets], atol=1e-13)
    N = rng.poisson(2.0, size=mdp.K.shape) * (mdp.P > 0)
    np.testing.assert_allclose(cls.count_fit(N, 1.0), tab.count_fit(N, 1.0), atol=1e-14)


@pytest.mark.parametrize("kind", ["aggregated", "linear"])
@pytest.mark.parametrize("seed", range(3))
def test_pullback_matches_finite_differences(kind, seed):
    mdp, rng = class_mdp(kind, seed)
    param = model_param(mdp)
    z = random_logits(param, rng)
    G = rng.standard_normal(mdp.K.shape)
    grad = param.pullback(G, z)
    h = 1e-6
    for i, k in zip(*np.nonzero(param.mask)):
        e = np.zeros(param.shape)
        e[i, k] = h
        fd = (np.sum(G * param.model(z + e)) - np.sum(G * param.model(z - e))) / (2 * h)
        assert abs(grad[i, k] - fd) <= 1e-7 * max(1.0, abs(fd)), (i, k, grad[i, k], fd)
    assert np.all(grad[~param.mask] == 0.0)


@pytest.mark.parametrize("seed", range(3))
def test_aggregated_count_fit_pools_the_group(seed):
    """Floor 0 and no prior: Phat(.|s,a) = sum_{s' in g} N(s',a,.) / sum_{s' in g} n(s',a) for every
    s of group g that has data (the maximum-likelihood model of the class)."""
    mdp, rng = class_mdp("aggregated", seed, eta=0.0)
    N = rng.poisson(3.0, size=mdp.K.shape) * (mdp.P > 0)
    Phat = model_param(mdp).count_fit(N, prior=0.0)
    for group in mdp.model_class.partition:
        live = [s for s in group if not mdp.terminal[s]]
        for a in range(mdp.n_actions):
            pooled = N[live, a].sum(axis=0)
            if pooled.sum() == 0:
                continue
            for s in live:
                np.testing.assert_allclose(Phat[s, a], pooled / pooled.sum(), atol=1e-14)


@pytest.mark.parametrize("seed", range(3))
def test_linear_count_fit_is_the_kl_fit_of_the_pseudo_counts(seed):
    """max_{theta >= eta, sum theta = 1} sum_t C(t) log(sum_k theta(k) Phi_k(t|s,a)) per pair, with
    C = N + prior/|K(s,a)| on K(s,a), by CVXPY (the fit may not be unique: the objectives agree)."""
    eta, prior = 1e-3, 1.0
    mdp, rng = class_mdp("linear", seed, eta=eta)
    N = rng.poisson(3.0, size=mdp.K.shape) * (mdp.P > 0)
    Phat = model_param(mdp).count_fit(N, prior)
    for b in mdp.model_blocks.blocks:
        (s, a), = b.pairs
        C = np.where(mdp.K[s, a], N[s, a] + prior / mdp.K[s, a].sum(), 0.0)
        t = np.flatnonzero(C > 0)
        Phi = b.rows(mdp.n_states)[:, 0, :]                    # (n, S)
        theta = cp.Variable(Phi.shape[0])
        prob = cp.Problem(cp.Maximize(C[t] @ cp.log(Phi[:, t].T @ theta)),
                          [theta >= eta, cp.sum(theta) == 1])
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
        ours = float(C[t] @ np.log(Phat[s, a, t]))
        assert ours >= prob.value - 1e-7 * max(1.0, abs(prob.value)), (s, a, ours, prob.value)


@pytest.mark.parametrize("kind", ["aggregated", "linear"])
def test_torch_model_and_its_gradient(kind):
    torch = pytest.importorskip("torch")
    mdp, rng = class_mdp(kind, 1)
    param = model_param(mdp)
    z = random_logits(param, rng)
    G = rng.standard_normal(mdp.K.shape)
    zt = torch.tensor(z, requires_grad=True)
    Pt = param.torch_model(zt)
    np.testing.assert_allclose(Pt.detach().numpy(), param.model(z), atol=1e-14)
    (Pt * torch.as_tensor(G)).sum().backward()
    np.testing.assert_allclose(zt.grad.numpy(), param.pullback(G, z), atol=1e-12)


# --------------------------------------------------------------------------- runs of a class

@pytest.fixture(scope="module")
def trap_runs(tmp_path_factory):
    """Inner-outer runs of MAL and PAL in the aggregated class of aggregated_trap."""
    out = tmp_path_factory.mktemp("trap_runs")
    mdp = load_mdp(TRAP)
    cfg = TrainConfig(leader_iters=8, eval_episodes=20, q_rollouts=32)
    recs = [train_inner_outer(mdp, f, seed=0, cfg=cfg, mdp_path=str(TRAP)) for f in ("MAL", "PAL")]
    for r in recs:
        (out / r.filename).write_text(r.to_json())
    return mdp, recs, out


def test_runs_record_their_class_and_stay_in_it(trap_runs):
    mdp, recs, _ = trap_runs
    for r in recs:
        assert r.model_class == "aggregated"
        assert mdp.model_blocks.distance(r.model) < 1e-12
        left, right = 1, 2                           # the merged cells share their rows
        np.testing.assert_allclose(r.model[left], r.model[right], atol=1e-15)


@pytest.fixture(scope="module")
def mal_docs(tmp_path_factory):
    """`bilevel.solve --json` of aggregated_trap's MAL in its class and in the tabular class."""
    d, docs = tmp_path_factory.mktemp("mal_docs"), {}
    for cls in ("aggregated", "tabular"):
        solve = subprocess.run([sys.executable, "-m", "bilevel.solve", str(TRAP), "--formulations", "MAL",
                                "--model-class", cls, "--json"], capture_output=True, text=True, cwd=ROOT)
        assert solve.returncode == 0, solve.stderr
        docs[cls] = d / f"{cls}.json"
        docs[cls].write_text(solve.stdout)
    return docs


def verify(*args):
    return subprocess.run([sys.executable, "-m", "bilevel.verify", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def test_verify_checks_class_runs_against_the_class(trap_runs, mal_docs):
    """The MAL run against the aggregated class's MAL interval [-1.88, J*] (solved by verify
    itself), and against equilibria files: the class's is accepted, the tabular one's refused."""
    mdp, recs, out = trap_runs
    mal = out / recs[0].filename
    res = verify(mal, "--json")
    assert res.returncode in (0, 1), res.stderr
    check, = json.loads(res.stdout)
    assert check["J_interval"][0] == pytest.approx(-1.88, abs=0.01)
    assert not any("off the aggregated class" in f for f in check["failed"])
    for cls, code in (("aggregated", (0, 1)), ("tabular", (2,))):
        res = verify(mal, "--equilibria", mal_docs[cls])
        assert res.returncode in code, res.stderr
        if cls == "tabular":
            assert len(res.stderr.strip().splitlines()) == 1 and "aggregated" in res.stderr


def test_verify_refuses_a_run_of_a_class_the_file_does_not_define(trap_runs, tmp_path):
    d = json.loads(trap_runs[1][0].to_json())
    d["model_class"] = "linear"
    f = tmp_path / "linear.json"
    f.write_text(json.dumps(d))
    res = verify(f)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0
    assert "model_class" in res.stderr and "defines an aggregated class" in res.stderr


def test_verify_flags_a_model_off_the_class(trap_runs, tmp_path):
    """A record that claims the aggregated class but whose merged cells predict different rows."""
    mdp, recs, _ = trap_runs
    d = json.loads(recs[0].to_json())
    model = np.array(d["model"])
    model[1, 0] = np.eye(5)[0]                       # left steps X to start, right does not
    d["model"] = model.tolist()
    f = tmp_path / "edited.json"
    f.write_text(json.dumps(d))
    res = verify(f, "--json")
    check, = json.loads(res.stdout)
    assert res.returncode == 1
    assert any("off the aggregated class" in x for x in check["failed"])


@pytest.mark.parametrize("formulation", ["PAL", "MAL"])
def test_contextualized_runs_stay_in_the_class(formulation):
    """The contextualized trainers draw their models from the class too (PAL: the MLP's logits per
    block, lifted; MAL: random pretraining models and the leader's logits)."""
    pytest.importorskip("torch")
    from bilevel.rl.contextual import ContextConfig, train_contextualized
    mdp = load_mdp(TRAP)
    cfg = ContextConfig(pretrain_steps=1024, pretrain_policies=6, pretrain_episodes=4, pretrain_epochs=20,
                        leader_iters=2, finetune_steps=256, finetune_epochs=10, eval_episodes=10,
                        hidden=16)
    rec = train_contextualized(mdp, formulation, seed=0, cfg=cfg)
    assert rec.model_class == "aggregated"
    assert mdp.model_blocks.distance(rec.model) < 1e-12


def test_report_checks_class_runs_and_refuses_another_class(trap_runs, mal_docs, tmp_path):
    """The report of aggregated_trap (the file's class) shows the class run verified against the
    class's MAL interval; an equilibria file of the tabular class is refused (exit 2, one line)."""
    _, recs, out = trap_runs
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / recs[0].filename).write_text(recs[0].to_json())
    docs = mal_docs

    def report(doc, name):
        return subprocess.run([sys.executable, "-m", "bilevel.report", str(TRAP), "--equilibria", str(doc),
                               "--runs", str(runs), "--no-sweep", "-q", "--out", str(tmp_path / name)],
                              capture_output=True, text=True, cwd=ROOT)

    bad = report(docs["tabular"], "bad")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "model_class" in bad.stderr
    assert not (tmp_path / "bad").exists()              # bad input writes nothing
    good = report(docs["aggregated"], "good")
    assert good.returncode == 0, good.stderr
    data = json.loads((tmp_path / "good" / "data.json").read_text())
    run, = data["runs"]["formulations"]["MAL"]["runs"]
    assert run["check"]["J_interval"][0] == pytest.approx(-1.88, abs=0.01)


def test_mal_trainer_stops_at_the_decoy_under_the_linear_class(tmp_path):
    """linear_hidden_goal: MAL's leader-optimal equilibria reach the goal ([73.84, 73.96], README),
    but the trainer's MAL settles on the decoy (J = 0.985): a fitted model in which the decoy is
    optimal, whose loss l(Phat, mu_pi) (computed here from the occupancy) is above the exact
    optimum's. verify fails the run and says why."""
    from bilevel.tabular.fits import model_loss
    from bilevel.tabular.occupancy import occupancy
    path = MDPS / "linear_hidden_goal.yaml"
    mdp = load_mdp(path)
    rec = train_inner_outer(mdp, "MAL", seed=0, cfg=TrainConfig(eval_episodes=20), mdp_path=str(path))
    (tmp_path / rec.filename).write_text(rec.to_json())
    assert rec.final["J"] == pytest.approx(0.985, abs=1e-3)
    res = verify(tmp_path, "--json")
    check, = json.loads(res.stdout)
    assert res.returncode == 1 and check["position"] == "outside"
    loss = model_loss(mdp.P, rec.model, occupancy(mdp.P, mdp.rho0, mdp.gamma, rec.policy))
    assert loss == pytest.approx(check["leader_objective"], rel=1e-9)
    assert loss > check["exact_leader_objective"] + 1e-4            # the band is 7e-6
    assert any("leader stopped at an equilibrium" in n for n in check["notes"])
