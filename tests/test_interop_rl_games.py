"""rl_games <-> Flax (`interop.rl_games`), checked against rl_games itself (torch, CPU).

Needs the interop extra (`pip install -e '.[interop]'`); skipped without it."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the interop extra is not installed (pip install -e '.[interop]')")
pytest.importorskip("rl_games", reason="the interop extra is not installed (pip install -e '.[interop]')")

from rl_games.algos_torch import model_builder, torch_ext  # noqa: E402

from refinery_jax.interop import rl_games as rlg  # noqa: E402
from refinery_jax.ppo.networks import ActorCritic, Policy, initial_carry, policy_sequence  # noqa: E402
from refinery_jax.ppo.normalization import RunningStats, normalize  # noqa: E402

OBS, ACTIONS, T, B = 24, 6, 9, 5


def _yaml(units, rnn=None, fixed_sigma=True):
    """A scaled-down AutoMate yaml (LSTM 256 x 2, MLP [256, 128, 64] ELU, fixed σ) or Factory's
    (LSTM with LayerNorm, σ from a Linear); `rnn`: (units, layers, layer_norm) or None."""
    net = rlg.RlGamesNetwork(mlp_units=units, rnn_units=rnn[0] if rnn else 0, rnn_layers=rnn[1] if rnn else 0,
                             rnn_layer_norm=rnn[2] if rnn else False, fixed_sigma=fixed_sigma)
    return net.yaml("test")


ARCHITECTURES = {
    "automate": ((32, 16, 8), (16, 2, False), True),
    "factory": ((24, 16, 8), (20, 2, True), False),
    "mlp": ((32, 16), None, True),
}


def _rl_games_model(config):
    """rl_games' own model for the yaml, every weight and statistic random (nothing at its init value)."""
    built = model_builder.ModelBuilder().load(copy.deepcopy(config["params"]))
    model = built.build({"actions_num": ACTIONS, "input_shape": (OBS,), "num_seqs": B, "value_size": 1,
                         "normalize_value": True, "normalize_input": True})
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if "running_var" in name:
                value.copy_(torch.rand(value.shape, generator=generator, dtype=value.dtype) * 2 + 0.1)
            elif value.is_floating_point():
                value.copy_(torch.randn(value.shape, generator=generator, dtype=value.dtype) * 0.4)
    return model.eval()


def _rl_games_actions(model, obs, first):
    """Step rl_games' model through obs [T, B, OBS], its LSTM state zeroed where an episode
    starts (first [T, B]) -> (mus, sigmas) [T, B, A]."""
    states = tuple(s[:, : obs.shape[1]] for s in model.get_default_rnn_state()) if model.is_rnn() else None
    mus, sigmas = [], []
    with torch.no_grad():
        for t in range(obs.shape[0]):
            if states is not None:
                keep = torch.from_numpy(~first[t]).float()[None, :, None]
                states = tuple(s * keep for s in states)
            out = model({"is_train": False, "obs": torch.from_numpy(obs[t]), "rnn_states": states, "seq_length": 1})
            states = out["rnn_states"]
            mus.append(out["mus"].numpy())
            sigmas.append(out["sigmas"].numpy())
    return np.stack(mus), np.stack(sigmas)


def _flax_actions(model: ActorCritic, policy, obs, first):
    means, log_std = policy_sequence(model, policy.params, normalize(policy.obs_stats, jnp.asarray(obs)),
                                     initial_carry(model, (obs.shape[1],), obs.shape[-1]), jnp.asarray(first))
    return np.asarray(means), np.asarray(jnp.exp(jnp.broadcast_to(log_std, means.shape)))


def _inputs():
    rng = np.random.default_rng(3)
    obs = (rng.normal(size=(T, B, OBS)) * 2).astype(np.float32)
    first = np.zeros((T, B), bool)
    first[0] = True
    first[4, 1] = first[6, 3] = True  # episodes restarting mid-sequence
    return obs, first


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_rl_games_checkpoint_loads_into_flax_with_the_same_actions(arch, tmp_path):
    config = _yaml(*ARCHITECTURES[arch])
    model = _rl_games_model(config)
    # rl_games' own save path, with what its agent writes beside the model
    torch_ext.save_checkpoint(str(tmp_path / "agent"), {"model": model.state_dict(), "epoch": 7, "frame": 12345,
                                                        "optimizer": torch.optim.Adam(model.parameters()).state_dict(),
                                                        "last_mean_rewards": np.float64(3.5), "env_state": None})
    imported = rlg.load_checkpoint(tmp_path / "agent.pth", config)
    assert (imported.obs_size, imported.action_size) == (OBS, ACTIONS)
    obs, first = _inputs()
    want_mu, want_sigma = _rl_games_actions(model, obs, first)
    got_mu, got_sigma = _flax_actions(imported.model, imported.policy, obs, first)
    assert np.ptp(want_mu) > 0.5  # the actions differ across inputs: the comparison means something
    np.testing.assert_allclose(got_mu, want_mu, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got_sigma, want_sigma, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_flax_policy_exports_to_rl_games_with_the_same_actions(arch, tmp_path):
    units, rnn, fixed = ARCHITECTURES[arch]
    model = ActorCritic(ACTIONS, units, (8,), "elu", "lstm" if rnn else "none", rnn[0] if rnn else 1,
                        rnn[1] if rnn else 1, memory_layer_norm=bool(rnn and rnn[2]),
                        sigma="fixed" if fixed else "linear")
    params = model.init(jax.random.key(0), jnp.zeros(OBS), jnp.zeros(4), initial_carry(model, (), OBS))
    params = jax.tree.map(lambda x: jax.random.normal(jax.random.key(x.size), x.shape) * 0.4, params)
    stats = RunningStats(mean=jax.random.normal(jax.random.key(1), (OBS,)),
                             var=jax.random.uniform(jax.random.key(2), (OBS,), minval=0.1, maxval=2.0),
                             count=jnp.asarray(321.0))
    policy = Policy(params=params, obs_stats=stats)
    rlg.export_checkpoint(model, policy, OBS, tmp_path / "export.pth", tmp_path / "export.yaml")
    # rl_games rebuilds the network from the yaml and loads the weights as its player does (strict)
    config = rlg.load_yaml(tmp_path / "export.yaml")
    rebuilt = model_builder.ModelBuilder().load(config["params"]).build(
        {"actions_num": ACTIONS, "input_shape": (OBS,), "num_seqs": B, "value_size": 1, "normalize_value": True,
         "normalize_input": True})
    rebuilt.load_state_dict(torch_ext.load_checkpoint(str(tmp_path / "export.pth"))["model"])
    obs, first = _inputs()
    want_mu, want_sigma = _flax_actions(model, policy, obs, first)
    got_mu, got_sigma = _rl_games_actions(rebuilt.eval(), obs, first)
    assert np.ptp(want_mu) > 0.5
    np.testing.assert_allclose(got_mu, want_mu, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got_sigma, want_sigma, atol=1e-5, rtol=1e-5)
    with pytest.raises(FileExistsError, match="not overwritten"):
        rlg.export_checkpoint(model, policy, OBS, tmp_path / "export.pth", tmp_path / "other.yaml")
    assert not (tmp_path / "other.yaml").exists()


def test_bad_checkpoints_name_the_key(tmp_path):
    config = _yaml(*ARCHITECTURES["automate"])
    state = {k: v.numpy() for k, v in _rl_games_model(config).state_dict().items()}
    net = rlg.RlGamesNetwork.from_yaml(config)

    missing = {k: v for k, v in state.items() if k != "a2c_network.rnn.rnn.weight_hh_l1"}
    with pytest.raises(ValueError, match="missing key 'a2c_network.rnn.rnn.weight_hh_l1'"):
        rlg.params_from_state_dict(net, missing)
    wrong = dict(state, **{"a2c_network.actor_mlp.2.weight": np.zeros((16, 33))})
    with pytest.raises(ValueError, match=r"'a2c_network.actor_mlp.2.weight' has shape \(16, 33\)"):
        rlg.params_from_state_dict(net, wrong)
    # Factory's checkpoint under AutoMate's yaml: σ is a Linear there, and the LSTM has a LayerNorm
    factory = {k: v.numpy() for k, v in _rl_games_model(_yaml((32, 16, 8), (16, 2, True), False)).state_dict().items()}
    with pytest.raises(ValueError, match="a2c_network.sigma"):
        rlg.params_from_state_dict(net, factory)
    with pytest.raises(ValueError, match="unsupported network.separate"):
        rlg.RlGamesNetwork.from_yaml({"params": dict(config["params"], network=dict(config["params"]["network"],
                                                                                      separate=True))})
    torch.save({"weights": {}}, tmp_path / "not_rl_games.pth")
    with pytest.raises(ValueError, match="not an rl_games checkpoint"):
        rlg.load_checkpoint(tmp_path / "not_rl_games.pth", config)


def test_automate_checkpoint_acts_in_the_project_env_through_the_conventions(tmp_path):
    """An rl_games policy of AutoMate's observation (24) and action conventions, imported and
    run in the project's environment: each action the environment received is rl_games' own
    mean action on AutoMate's view of the observation, mapped to the project's action."""
    from refinery_jax.envs.assembly_env import AssemblyEnv
    from refinery_jax.envs.episodes import run_episode
    from refinery_jax.interop.isaac_lab import AUTOMATE_OBS_SIZE, automate_actor, automate_observation, project_action
    from refinery_jax.ppo.networks import policy_actor

    from test_ppo import SMOKE

    assert AUTOMATE_OBS_SIZE == OBS
    config = _yaml(*ARCHITECTURES["automate"])
    model = _rl_games_model(config)
    torch_ext.save_checkpoint(str(tmp_path / "automate"), {"model": model.state_dict(), "epoch": 1, "frame": 1})
    imported = rlg.load_checkpoint(tmp_path / "automate.pth", config)
    env = AssemblyEnv(SMOKE.env)
    actor = automate_actor(policy_actor(imported.model, imported.obs_size))
    steps = 6
    episode = jax.jit(lambda key: run_episode(env, actor, (imported.policy, True), key, jnp.zeros(3), steps=steps,
                                              record=True))(jax.random.key(0))
    seen, acted = (np.asarray(x) for x in episode.trajectory)
    view = np.asarray(automate_observation(jnp.asarray(seen)))[:, None, :]  # [steps, 1, 24]: one environment
    mus, _ = _rl_games_actions(model, view.astype(np.float32), (np.arange(steps) == 0)[:, None])
    np.testing.assert_allclose(acted, np.asarray(project_action(jnp.asarray(mus[:, 0]))), atol=1e-5)
    assert np.ptp(acted[:, :3]) > 0.01  # the policy's actions vary over the episode


def test_script_exports_a_specialist_run_that_rl_games_reproduces(tmp_path, load_script_main, specialist_run):
    from refinery_jax.envs.assembly_env import POLICY_OBS_SIZE

    run, trainer, policy = specialist_run
    main = load_script_main(rlg_script())
    main(["export", "--run", str(run), "--out", str(tmp_path / "export")])
    config = rlg.load_yaml(tmp_path / "export" / "specialist.yaml")
    rebuilt = model_builder.ModelBuilder().load(config["params"]).build(
        {"actions_num": ACTIONS, "input_shape": (POLICY_OBS_SIZE,), "num_seqs": B, "value_size": 1,
         "normalize_value": True, "normalize_input": True})
    rebuilt.load_state_dict(torch_ext.load_checkpoint(str(tmp_path / "export" / "specialist.pth"))["model"])
    obs = (np.random.default_rng(1).normal(size=(3, B, POLICY_OBS_SIZE))).astype(np.float32)
    first = np.zeros((3, B), bool)
    want, _ = _flax_actions(trainer.model, policy, obs, first)
    got, _ = _rl_games_actions(rebuilt.eval(), obs, first)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(SystemExit):  # nothing is overwritten
        main(["export", "--run", str(run), "--out", str(tmp_path / "export")])


def test_script_evaluates_an_automate_checkpoint_in_the_env(tmp_path, capsys, load_script_main):
    import json

    config = _yaml(*ARCHITECTURES["automate"])
    torch_ext.save_checkpoint(str(tmp_path / "automate"), {"model": _rl_games_model(config).state_dict()})
    (tmp_path / "automate.yaml").write_text(__import__("yaml").safe_dump(config))
    main = load_script_main(rlg_script())
    args = ["evaluate", "--checkpoint", str(tmp_path / "automate.pth"), "--config", str(tmp_path / "automate.yaml"),
            "--task", "square_peg_loose", "--embodiment", "floating_hand", "--trials", "4"]
    results = main(args + ["--out", str(tmp_path / "eval")])
    assert results["trials"] == 4 and 0.0 <= results["success"] <= 1.0
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["success"] == results["success"]
    # a checkpoint of another observation layout is refused with the sizes named
    other = _yaml((16,))
    built = model_builder.ModelBuilder().load(copy.deepcopy(other["params"])).build(
        {"actions_num": ACTIONS, "input_shape": (31,), "num_seqs": 1, "value_size": 1, "normalize_value": True,
         "normalize_input": True})
    torch_ext.save_checkpoint(str(tmp_path / "project"), {"model": built.state_dict()})
    (tmp_path / "project.yaml").write_text(__import__("yaml").safe_dump(other))
    with pytest.raises(SystemExit, match="observes 31 values"):
        main(["evaluate", "--checkpoint", str(tmp_path / "project.pth"), "--config", str(tmp_path / "project.yaml"),
              "--out", str(tmp_path / "eval2")])
    bad = dict(other["params"], network=dict(other["params"]["network"], separate=True))
    (tmp_path / "bad.yaml").write_text(__import__("yaml").safe_dump({"params": bad}))
    with pytest.raises(SystemExit):
        main(["evaluate", "--checkpoint", str(tmp_path / "project.pth"), "--config", str(tmp_path / "bad.yaml"),
              "--out", str(tmp_path / "eval3")])
    assert "unsupported network.separate" in capsys.readouterr().err


def rlg_script():
    import pathlib

    return pathlib.Path(__file__).resolve().parents[1] / "experiments" / "rl_games_interop.py"
