"""rl_games 1.6.5 checkpoints <-> the project's Flax policies, both ways.

rl_games (the PPO library of Isaac Lab's AutoMate and Factory) saves `torch.save` dicts
whose "model" entry is the state dict of a `continuous_a2c_logstd` model. This module
ports the actor of such a model to an `ActorCritic` plus its `Policy` (parameters and
observation statistics), and writes a project policy back as a checkpoint plus the yaml
that rebuilds it in rl_games.

What is ported (the `actor_critic` network with `separate: False`, as both yamls use):
  running_mean_std.*                 -> Policy.obs_stats (rl_games normalises exactly as
                                        `ppo.normalization.normalize`: clip((x - μ)/√(σ² + 1e-5), ±5))
  a2c_network.rnn.rnn.*_l{k}         -> params cells_k (LSTM before the MLP; torch's gate rows
                                        i, f, g, o; its two biases summed into Flax's hidden bias)
  a2c_network.layer_norm.*           -> params memory_norm (rnn.layer_norm: True, Factory)
  a2c_network.actor_mlp.{0,2,4,..}.* -> params actor/Dense_0.. (kernels transposed)
  a2c_network.mu.*                   -> params actor/Dense_n (the mean head)
  a2c_network.sigma                  -> params log_std (fixed_sigma: True, AutoMate), or
  a2c_network.sigma.*                -> params actor/sigma (fixed_sigma: False, Factory)
Not ported: the value head (`a2c_network.value`, on the actor's trunk) and value
statistics. The project's critic is a separate MLP on the privileged observation, so an
imported policy gets a freshly initialised critic (what a fine-tuning run trains); an
exported one carries a zero value head, which rl_games needs to load the model but which
acting never reads.

torch is needed to read and write the files (`pip install -e '.[interop]'`); it is imported
here only, never by the core package.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from refinery_jax.ppo.networks import ACTIVATIONS, ActorCritic, Policy, initial_carry
from refinery_jax.ppo.normalization import RunningStats

GATES = ("i", "f", "g", "o")  # torch.nn.LSTM's row blocks, and Flax's OptimizedLSTMCell names
COMPILED_PREFIX = "_orig_mod."  # torch.compile's prefix, which rl_games strips on load too


@dataclasses.dataclass(frozen=True)
class RlGamesNetwork:
    """The architecture an rl_games yaml describes (the parts this module ports)."""

    mlp_units: tuple[int, ...]
    activation: str = "elu"
    rnn_units: int = 0            # 0: no LSTM
    rnn_layers: int = 0
    rnn_layer_norm: bool = False
    fixed_sigma: bool = True
    normalize_input: bool = True

    @classmethod
    def from_yaml(cls, config: dict) -> "RlGamesNetwork":
        """From a parsed rl_games yaml (its top-level `params`). ValueError naming the field
        for anything this module does not port."""
        params = config.get("params", config)

        def need(condition, field, got):
            if not condition:
                raise ValueError(f"rl_games yaml: unsupported {field} = {got!r}")

        need(params.get("algo", {}).get("name") == "a2c_continuous", "algo.name", params.get("algo", {}).get("name"))
        need(params.get("model", {}).get("name") == "continuous_a2c_logstd", "model.name",
             params.get("model", {}).get("name"))
        net = params["network"]
        need(net.get("name") == "actor_critic", "network.name", net.get("name"))
        need(not net.get("separate", False), "network.separate", net.get("separate"))
        need("cnn" not in net, "network.cnn", "present")
        space = net.get("space", {}).get("continuous")
        need(space is not None, "network.space", net.get("space"))
        for field in ("mu_activation", "sigma_activation"):
            need(space.get(field, "None") == "None", f"network.space.continuous.{field}", space.get(field))
        mlp = net["mlp"]
        need(mlp.get("activation") in ACTIVATIONS, "network.mlp.activation", mlp.get("activation"))
        need(not mlp.get("d2rl", False), "network.mlp.d2rl", mlp.get("d2rl"))
        need(net.get("normalization") is None, "network.normalization", net.get("normalization"))
        rnn = net.get("rnn")
        if rnn is not None:
            need(rnn.get("name") == "lstm", "network.rnn.name", rnn.get("name"))
            need(rnn.get("before_mlp", False), "network.rnn.before_mlp", rnn.get("before_mlp"))
            need(not rnn.get("concat_output", False), "network.rnn.concat_output", rnn.get("concat_output"))
        return cls(mlp_units=tuple(int(u) for u in mlp["units"]), activation=mlp["activation"],
                   rnn_units=int(rnn["units"]) if rnn else 0, rnn_layers=int(rnn["layers"]) if rnn else 0,
                   rnn_layer_norm=bool(rnn.get("layer_norm", False)) if rnn else False,
                   fixed_sigma=bool(space["fixed_sigma"]),
                   normalize_input=bool(params.get("config", {}).get("normalize_input", False)))

    @classmethod
    def from_model(cls, model: ActorCritic) -> "RlGamesNetwork":
        """The rl_games network equivalent to a project actor (LSTM or MLP only)."""
        if model.memory == "history":
            raise ValueError("an observation-history actor has no rl_games equivalent (use memory 'none' or 'lstm')")
        lstm = model.memory == "lstm"
        return cls(mlp_units=tuple(model.actor_hidden), activation=model.activation,
                   rnn_units=model.memory_size if lstm else 0, rnn_layers=model.memory_layers if lstm else 0,
                   rnn_layer_norm=model.memory_layer_norm, fixed_sigma=model.sigma == "fixed")

    def model(self, action_size: int) -> ActorCritic:
        """The project actor of this architecture (its critic: an MLP of the same widths)."""
        return ActorCritic(action_size, self.mlp_units, self.mlp_units, self.activation,
                           memory="lstm" if self.rnn_units else "none", memory_size=max(self.rnn_units, 1),
                           memory_layers=max(self.rnn_layers, 1), memory_layer_norm=self.rnn_layer_norm,
                           sigma="fixed" if self.fixed_sigma else "linear")

    def yaml(self, name: str = "refinery_jax_export") -> dict:
        """An rl_games yaml (`params`) that rebuilds this network; PPO settings are AutoMate's."""
        network = {"name": "actor_critic", "separate": False,
                   "space": {"continuous": {"mu_activation": "None", "sigma_activation": "None",
                                            "mu_init": {"name": "default"},
                                            "sigma_init": {"name": "const_initializer", "val": 0},
                                            "fixed_sigma": self.fixed_sigma}},
                   "mlp": {"units": list(self.mlp_units), "activation": self.activation, "d2rl": False,
                           "initializer": {"name": "default"}, "regularizer": {"name": "None"}}}
        if self.rnn_units:
            network["rnn"] = {"name": "lstm", "units": self.rnn_units, "layers": self.rnn_layers, "before_mlp": True,
                              "concat_input": True, "layer_norm": self.rnn_layer_norm}
        return {"params": {"seed": 0, "algo": {"name": "a2c_continuous"}, "model": {"name": "continuous_a2c_logstd"},
                           "network": network,
                           "config": {"name": name, "normalize_input": self.normalize_input,
                                      "normalize_value": True, "value_bootstrap": True,
                                      "clip_actions": 1.0, "reward_shaper": {"scale_value": 1.0},
                                      "gamma": 0.99, "tau": 0.95, "learning_rate": 1e-4, "lr_schedule": "fixed",
                                      "kl_threshold": 0.016, "horizon_length": 32, "minibatch_size": 4096,
                                      "mini_epochs": 8, "e_clip": 0.2, "critic_coef": 2, "entropy_coef": 0.0,
                                      "seq_length": 4, "bounds_loss_coef": 1e-4, "truncate_grads": False,
                                      "grad_norm": 1.0, "max_epochs": 1500, "num_actors": 128,
                                      "mixed_precision": False, "normalize_advantage": True}}}


@dataclasses.dataclass(frozen=True)
class ImportedPolicy:
    network: RlGamesNetwork
    model: ActorCritic
    policy: Policy
    obs_size: int
    action_size: int


# --------------------------------------------------------------------------- state dict <-> params

def _state_dict_shapes(net: RlGamesNetwork, obs_size: int, action_size: int) -> dict[str, tuple]:
    """Every key rl_games' model of this architecture has, with its shape."""
    shapes: dict[str, tuple] = {}
    if net.normalize_input:
        shapes.update({"running_mean_std.running_mean": (obs_size,), "running_mean_std.running_var": (obs_size,),
                       "running_mean_std.count": ()})
    shapes.update({"value_mean_std.running_mean": (1,), "value_mean_std.running_var": (1,),
                   "value_mean_std.count": ()})
    width = obs_size
    for k in range(net.rnn_layers):
        h = net.rnn_units
        shapes.update({f"a2c_network.rnn.rnn.weight_ih_l{k}": (4 * h, width),
                       f"a2c_network.rnn.rnn.weight_hh_l{k}": (4 * h, h),
                       f"a2c_network.rnn.rnn.bias_ih_l{k}": (4 * h,), f"a2c_network.rnn.rnn.bias_hh_l{k}": (4 * h,)})
        width = h
    if net.rnn_layer_norm:
        shapes.update({"a2c_network.layer_norm.weight": (width,), "a2c_network.layer_norm.bias": (width,)})
    for i, units in enumerate(net.mlp_units):
        shapes.update({f"a2c_network.actor_mlp.{2 * i}.weight": (units, width),
                       f"a2c_network.actor_mlp.{2 * i}.bias": (units,)})
        width = units
    shapes.update({"a2c_network.mu.weight": (action_size, width), "a2c_network.mu.bias": (action_size,),
                   "a2c_network.value.weight": (1, width), "a2c_network.value.bias": (1,)})
    if net.fixed_sigma:
        shapes["a2c_network.sigma"] = (action_size,)
    else:
        shapes.update({"a2c_network.sigma.weight": (action_size, width), "a2c_network.sigma.bias": (action_size,)})
    return shapes


def _sizes_from_state_dict(state: dict[str, np.ndarray]) -> tuple[int, int]:
    """(observation size, action size) an rl_games state dict was built for."""
    try:
        action_size = state["a2c_network.mu.weight"].shape[0]
        first = "a2c_network.rnn.rnn.weight_ih_l0" if "a2c_network.rnn.rnn.weight_ih_l0" in state \
            else "a2c_network.actor_mlp.0.weight"
        return int(state[first].shape[1]), int(action_size)
    except KeyError as missing:
        raise ValueError(f"rl_games checkpoint: missing key {missing.args[0]!r}") from None


def params_from_state_dict(net: RlGamesNetwork, state: dict[str, Any], key: jax.Array | None = None) -> ImportedPolicy:
    """The project policy of an rl_games model state dict (arrays or tensors, keys as rl_games
    saves them). ValueError naming the key for a missing key, a wrong shape or a key of
    another architecture."""
    state = {k.removeprefix(COMPILED_PREFIX): np.asarray(v, dtype=np.float64) for k, v in state.items()}
    obs_size, action_size = _sizes_from_state_dict(state)
    expected = _state_dict_shapes(net, obs_size, action_size)
    for name, shape in expected.items():
        if name not in state:
            raise ValueError(f"rl_games checkpoint: missing key {name!r} (the yaml's architecture expects it)")
        if state[name].shape != shape:
            raise ValueError(f"rl_games checkpoint: {name!r} has shape {state[name].shape}, the yaml's "
                             f"architecture needs {shape}")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise ValueError(f"rl_games checkpoint: unexpected key {extra[0]!r} (another architecture than the yaml's; "
                         f"{len(extra)} unexpected in all)")

    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    model = net.model(action_size)
    key = jax.random.key(0) if key is None else key
    params = model.init(key, jnp.zeros(obs_size), jnp.zeros(obs_size), initial_carry(model, (), obs_size))
    p = jax.tree.map(lambda x: x, params["params"])  # a mutable copy (nested dicts)
    h = net.rnn_units
    for k in range(net.rnn_layers):
        w_ih, w_hh = state[f"a2c_network.rnn.rnn.weight_ih_l{k}"], state[f"a2c_network.rnn.rnn.weight_hh_l{k}"]
        bias = state[f"a2c_network.rnn.rnn.bias_ih_l{k}"] + state[f"a2c_network.rnn.rnn.bias_hh_l{k}"]
        for g, gate in enumerate(GATES):
            rows = slice(g * h, (g + 1) * h)
            p[f"cells_{k}"][f"i{gate}"] = {"kernel": f32(w_ih[rows].T)}
            p[f"cells_{k}"][f"h{gate}"] = {"kernel": f32(w_hh[rows].T), "bias": f32(bias[rows])}
    if net.rnn_layer_norm:
        p["memory_norm"] = {"scale": f32(state["a2c_network.layer_norm.weight"]),
                            "bias": f32(state["a2c_network.layer_norm.bias"])}
    layers = len(net.mlp_units)
    for i in range(layers):
        p["actor"][f"Dense_{i}"] = {"kernel": f32(state[f"a2c_network.actor_mlp.{2 * i}.weight"].T),
                                    "bias": f32(state[f"a2c_network.actor_mlp.{2 * i}.bias"])}
    p["actor"][f"Dense_{layers}"] = {"kernel": f32(state["a2c_network.mu.weight"].T),
                                     "bias": f32(state["a2c_network.mu.bias"])}
    if net.fixed_sigma:
        p["log_std"] = f32(state["a2c_network.sigma"])
    else:
        p["actor"]["sigma"] = {"kernel": f32(state["a2c_network.sigma.weight"].T),
                               "bias": f32(state["a2c_network.sigma.bias"])}
    if net.normalize_input:
        stats = RunningStats(mean=f32(state["running_mean_std.running_mean"]),
                             var=f32(state["running_mean_std.running_var"]),
                             count=f32(state["running_mean_std.count"]))
    else:  # identity normalisation: mean 0, and var + 1e-5 = 1
        stats = RunningStats(mean=jnp.zeros(obs_size), var=jnp.full(obs_size, 1.0 - 1e-5), count=f32(1.0))
    return ImportedPolicy(network=net, model=model, policy=Policy(params={"params": p}, obs_stats=stats),
                          obs_size=obs_size, action_size=action_size)


def state_dict_from_params(model: ActorCritic, policy: Policy, obs_size: int) -> dict[str, np.ndarray]:
    """The rl_games state dict (numpy; rl_games' dtypes) of a project actor (the inverse of
    `params_from_state_dict`; the value head is zero, see the module docstring)."""
    net = RlGamesNetwork.from_model(model)
    p = jax.tree.map(np.asarray, policy.params["params"])
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    state: dict[str, np.ndarray] = {
        "running_mean_std.running_mean": np.asarray(policy.obs_stats.mean, np.float64),
        "running_mean_std.running_var": np.asarray(policy.obs_stats.var, np.float64),
        "running_mean_std.count": np.asarray(policy.obs_stats.count, np.float64),
        "value_mean_std.running_mean": np.zeros(1), "value_mean_std.running_var": np.ones(1),
        "value_mean_std.count": np.asarray(1e-4)}
    for k in range(net.rnn_layers):
        cell = p[f"cells_{k}"]
        state[f"a2c_network.rnn.rnn.weight_ih_l{k}"] = f32(np.concatenate([cell[f"i{g}"]["kernel"].T for g in GATES]))
        state[f"a2c_network.rnn.rnn.weight_hh_l{k}"] = f32(np.concatenate([cell[f"h{g}"]["kernel"].T for g in GATES]))
        state[f"a2c_network.rnn.rnn.bias_ih_l{k}"] = f32(np.concatenate([cell[f"h{g}"]["bias"] for g in GATES]))
        state[f"a2c_network.rnn.rnn.bias_hh_l{k}"] = np.zeros(4 * net.rnn_units, np.float32)
    if net.rnn_layer_norm:
        state["a2c_network.layer_norm.weight"] = f32(p["memory_norm"]["scale"])
        state["a2c_network.layer_norm.bias"] = f32(p["memory_norm"]["bias"])
    layers = len(net.mlp_units)
    for i in range(layers):
        state[f"a2c_network.actor_mlp.{2 * i}.weight"] = f32(p["actor"][f"Dense_{i}"]["kernel"].T)
        state[f"a2c_network.actor_mlp.{2 * i}.bias"] = f32(p["actor"][f"Dense_{i}"]["bias"])
    state["a2c_network.mu.weight"] = f32(p["actor"][f"Dense_{layers}"]["kernel"].T)
    state["a2c_network.mu.bias"] = f32(p["actor"][f"Dense_{layers}"]["bias"])
    width = net.mlp_units[-1] if net.mlp_units else (net.rnn_units or obs_size)
    state["a2c_network.value.weight"] = np.zeros((1, width), np.float32)
    state["a2c_network.value.bias"] = np.zeros(1, np.float32)
    if net.fixed_sigma:
        state["a2c_network.sigma"] = f32(p["log_std"])
    else:
        state["a2c_network.sigma.weight"] = f32(p["actor"]["sigma"]["kernel"].T)
        state["a2c_network.sigma.bias"] = f32(p["actor"]["sigma"]["bias"])
    return state


# --------------------------------------------------------------------------- files

def _torch():
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        raise ImportError("reading and writing rl_games checkpoints needs torch: pip install -e '.[interop]'") from None
    return torch


def load_yaml(path) -> dict:
    import yaml  # noqa: PLC0415

    return yaml.safe_load(pathlib.Path(path).read_text())


def load_checkpoint(checkpoint, config, key: jax.Array | None = None) -> ImportedPolicy:
    """An rl_games checkpoint (.pth) as a project policy; `config`: its yaml (path or parsed).
    The yaml is checked before the file is read."""
    net = RlGamesNetwork.from_yaml(config if isinstance(config, dict) else load_yaml(config))
    torch = _torch()
    # rl_games saves numpy scalars beside the tensors; torch's safe loader accepts them once allowed
    with torch.serialization.safe_globals([np._core.multiarray.scalar, np.dtype, np.dtypes.Float64DType,
                                           np.dtypes.Float32DType, np.dtypes.Int64DType]):
        saved = torch.load(pathlib.Path(checkpoint), map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or "model" not in saved:
        raise ValueError(f"{checkpoint}: not an rl_games checkpoint (no 'model' entry)")
    return params_from_state_dict(net, {k: v.numpy() for k, v in saved["model"].items()}, key)


def export_checkpoint(model: ActorCritic, policy: Policy, obs_size: int, checkpoint, config_path,
                      name: str = "refinery_jax_export") -> None:
    """Write a project actor as an rl_games checkpoint (`checkpoint`, a .pth path) and the yaml
    that rebuilds it (`config_path`). Existing files are not overwritten."""
    import yaml  # noqa: PLC0415

    checkpoint, config_path = pathlib.Path(checkpoint), pathlib.Path(config_path)
    for path in (checkpoint, config_path):
        if path.exists():
            raise FileExistsError(f"{path} exists; exports are not overwritten")
    net = RlGamesNetwork.from_model(model)
    state = state_dict_from_params(model, policy, obs_size)
    torch = _torch()
    saved = {"model": {k: torch.from_numpy(np.array(v)) for k, v in state.items()},
             "epoch": 0, "frame": 0, "last_mean_rewards": -1e9, "env_state": None}
    torch.save(saved, checkpoint)
    config_path.write_text(yaml.safe_dump(net.yaml(name), sort_keys=False))
