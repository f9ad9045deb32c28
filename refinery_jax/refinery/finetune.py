"""Algorithm 1: BO-guided fine-tuning of a trained specialist.

One *round* has two halves, each a pure function of the named state:

    assess   evaluate the current policy (deterministic mean actions) at
             `eval_points` fresh uniform θ, record its success rate, apply the
             convergence rule; unless the run is done, fit a GP (refitted every
             round, because the policy changed) and propose `q` initial conditions
             with the acquisition.
    improve  unless the run is done, `updates_per_round` PPO updates whose resets draw
             from the round's proposals (a `uniform_share` of them stays uniform).

The GP's data. Round r's GP sees the outcomes of the last `gp_rounds` evaluations
(round r's included), each round of age a as a precision multiplier `gp_decay ** a`
(its noise variance times 2**a at the default 0.5). Earlier rounds evaluated an
earlier policy, so they must count less than the current one where both have data;
but one round's 256 Bernoulli outcomes leave much of a 3-D box unobserved, and there
the earlier rounds are the best evidence there is. A fit whose posterior or proposals
are not finite is recorded (`history.gp_failed`) and that round's proposals are
uniform draws over the box; `run_rounds` says so.

Convergence. The paper stops at "< 5 % variation in success rate over 5 consecutive
evaluations". Each evaluation is a binomial rate over `eval_points` trials, so an
absolute 5-point span is pure noise at small `eval_points` (a flat policy at 0.8 on 64
trials has σ = 0.05 per round: 6 % of its 5-round windows span < 0.05) and too loose at
large ones. Here the last `window` rates must span no more than the larger of (a) the
relative reading of the paper, `tolerance` x their mean, and (b) the range that
evaluation noise alone gives a constant policy on average, d2(window) x
sqrt(p(1 − p) / eval_points) (d2: the expected range of `window` standard normals,
2.326 for 5). A policy that stopped improving then stops within a few rounds whatever
`eval_points` is; one that still improves by more than the noise does not. The round
budget caps the run. It ends on an evaluation, so the returned policy is the one last
evaluated.

The control the paper does not report is `FineTuneConfig(guided=False)` run with the
BO run's round count as budget: `assess` only counts rounds (no evaluation, no GP)
and `improve` resets uniformly (share 1), so it gets the same PPO updates and env
steps. `improve` reads the share from the state, so BO and control compile the same
program (the persistent compilation cache then compiles it once).

    finetune = make_finetune(config, trainer, evaluate)
    state = finetune.init(key, train_state)               # optional max_rounds [] (traced)
    state = finetune.round(state)                         # assess + improve (no-op once done)
    state = finetune.run(state)                           # rounds until done (while_loop)

Everything is jittable; several seeds are a `vmap`. `assess` is `request` (the θ to
evaluate) → `evaluate` → `record` (GP, proposals, convergence); `run_rounds` in
`comparison.py` calls these pieces separately so the (vmapped) `evaluate` program is
compiled once and shared with every other evaluation of the experiment. `state.history` holds the per-round
record (success, proposals, GP hyper-parameters, evaluated θ and outcomes).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from refinery_jax.envs.samplers import Sampler
from refinery_jax.ppo.train import Trainer, TrainState, make_chunk, make_trainer
from refinery_jax.success_models import AcquisitionParams, GPConfig, GPParams, ProposalConfig, fit_gp, propose

@dataclasses.dataclass(frozen=True)
class FineTuneConfig:
    """Static settings of the fine-tuning loop (hashable)."""

    guided: bool = True             # BO-guided resets (Algorithm 1), or the uniform-reset control
    eval_points: int = 256          # fresh uniform θ evaluated per round (the GP's data)
    updates_per_round: int = 10     # PPO updates between evaluations
    max_rounds: int = 10            # upper bound on rounds (array sizes); `init` may lower it per run
    window: int = 5                 # convergence: the last `window` success rates span no more than ...
    tolerance: float = 0.05         # ... this share of their mean, or evaluation noise (module docstring)
    gp_rounds: int = 3              # the GP sees the outcomes of this many latest rounds ...
    gp_decay: float = 0.5           # ... each round of age a with precision multiplier gp_decay ** a
    uniform_share: float = 0.25     # share of resets drawn uniformly during BO fine-tuning
    learning_rate: float = 3e-4     # constant during fine-tuning (the specialist's schedule has ended)
    proposal: ProposalConfig = ProposalConfig(q=32)
    acquisition: tuple[float, float] = (2.0, 0.0)  # (β, ξ) of AcquisitionParams
    gp: GPConfig = GPConfig()

    def __post_init__(self):
        if min(self.eval_points, self.updates_per_round, self.max_rounds, self.window, self.gp_rounds) < 1:
            raise ValueError(f"counts must be positive: {self}")
        if not 0.0 <= self.uniform_share <= 1.0:
            raise ValueError(f"uniform_share must be in [0, 1], got {self.uniform_share}")
        if self.tolerance <= 0 or self.learning_rate <= 0:
            raise ValueError("tolerance and learning_rate must be positive")
        if not 0.0 < self.gp_decay <= 1.0:
            raise ValueError(f"gp_decay must be in (0, 1], got {self.gp_decay}")


@struct.dataclass
class FineTuneHistory:
    """Per-round record; rows at and after `FineTuneState.rounds` are unused (zeros)."""

    success_rate: jax.Array   # [R] success on the round's evaluation points
    eval_inits: jax.Array     # [R, E, d] evaluated θ (reached at reset; d = 3, or 4 with θ_yaw)
    eval_success: jax.Array   # [R, E] bool outcomes
    proposals: jax.Array      # [R, q, d] θ' for that round's resets (zeros for the control)
    gp_params: GPParams       # [R] fitted hyper-parameters (zeros for the control)
    gp_failed: jax.Array      # [R] bool: the GP's posterior or proposals were not finite; proposals uniform
    trained: jax.Array        # [R] bool: PPO updates ran after this evaluation
    env_steps: jax.Array      # [R] cumulative fine-tuning env steps after the round
    train_success: jax.Array  # [R] success rate of the training episodes that ended in the round


@struct.dataclass
class FineTuneState:
    train: TrainState
    key: jax.Array
    rounds: jax.Array         # [] int32 rounds evaluated so far
    max_rounds: jax.Array     # [] int32 this run's round budget (<= config.max_rounds)
    uniform_share: jax.Array  # [] share of uniform resets (1 for the control)
    converged: jax.Array      # [] bool: stopped by the convergence rule
    done: jax.Array           # [] bool: converged or budget spent
    history: FineTuneHistory


class FineTune(NamedTuple):
    config: FineTuneConfig
    init: Callable[..., FineTuneState]
    request: Callable                 # state -> (θ [E, d], key): what this round evaluates
    record: Callable                  # (state, θ, success [E]) -> state: model, propose, rounds += 1
    assess: Callable[[FineTuneState], FineTuneState]  # record(state, evaluate(request(state)))
    improve: Callable[[FineTuneState], FineTuneState]
    round: Callable[[FineTuneState], FineTuneState]
    run: Callable[[FineTuneState], FineTuneState]


def expected_normal_range(n: int) -> float:
    """d2(n): the expected range (max − min) of n independent standard normals (1.128 for 2,
    2.326 for 5): the integral of 1 − Φ(x)^n − (1 − Φ(x))^n over x."""
    if n < 1:
        raise ValueError(f"need n >= 1, got {n}")
    xs = [-12.0 + 24.0 * i / 24000 for i in range(24001)]
    cdf = [0.5 * (1.0 + math.erf(x / math.sqrt(2.0))) for x in xs]
    values = [1.0 - c ** n - (1.0 - c) ** n for c in cdf]
    return (sum(values) - 0.5 * (values[0] + values[-1])) * (24.0 / 24000)


def stop_span(success_rates: jax.Array, count: jax.Array, window: int, tolerance: float,
              eval_points: int) -> tuple[jax.Array, jax.Array]:
    """(span of the last `window` of the first `count` rates, the span allowed: the larger of
    `tolerance` x their mean and d2(window) x the binomial std of one rate at their mean)."""
    rates = jnp.asarray(success_rates)
    idx = jnp.arange(rates.shape[0])
    recent = (idx < count) & (idx >= count - window)
    span = jnp.max(jnp.where(recent, rates, -jnp.inf)) - jnp.min(jnp.where(recent, rates, jnp.inf))
    mean = jnp.sum(jnp.where(recent, rates, 0.0)) / jnp.maximum(jnp.minimum(count, window), 1)
    noise = expected_normal_range(window) * jnp.sqrt(mean * (1.0 - mean) / eval_points)
    return span, jnp.maximum(tolerance * mean, noise)


def has_converged(success_rates: jax.Array, count: jax.Array, window: int, tolerance: float,
                  eval_points: int) -> jax.Array:
    """The stopping rule (module docstring) on the first `count` entries of `success_rates` [R],
    each a rate over `eval_points` trials. False with fewer than `window` rates."""
    span, allowed = stop_span(success_rates, count, window, tolerance, eval_points)
    return (count >= window) & (span <= allowed)


def gp_data(eval_inits: jax.Array, eval_success: jax.Array, r: jax.Array, rounds: int, decay: float):
    """The GP's data at round r: θ [K·E, d], outcomes [K·E] and weights [K·E] of rounds r, r − 1,
    ..., r − K + 1 (K = `rounds`) from the history [R, E, ...]; round r − a has weight
    decay ** a, and rounds before 0 weight 0 (padding)."""
    ages = jnp.arange(rounds)
    rows = jnp.maximum(r - ages, 0)
    weights = jnp.where(r - ages >= 0, decay ** ages.astype(jnp.float32), 0.0)
    e = eval_success.shape[1]
    return (eval_inits[rows].reshape(-1, eval_inits.shape[-1]), eval_success[rows].reshape(-1).astype(jnp.float32),
            jnp.repeat(weights, e))


def proposal_sampler(proposals: jax.Array, low, high, uniform_share) -> Sampler:
    """`key -> init [d]`: a uniformly chosen proposal, or with probability `uniform_share` a uniform θ."""
    low, high = jnp.asarray(low, jnp.float32), jnp.asarray(high, jnp.float32)

    def sample(key):
        k_coin, k_pick, k_uniform = jax.random.split(key, 3)
        picked = proposals[jax.random.randint(k_pick, (), 0, proposals.shape[0])]
        uniform = jax.random.uniform(k_uniform, low.shape, minval=low, maxval=high)
        return jnp.where(jax.random.uniform(k_coin) < uniform_share, uniform, picked)

    return sample


def make_finetune(config: FineTuneConfig, trainer: Trainer, evaluate: Callable) -> FineTune:
    """Build the fine-tuning loop around a specialist's `trainer` and a jitted `evaluate`.

    trainer: `make_trainer(ppo_config, env)` of the specialist (its PPO config and
      environment; its sampler is replaced round by round). evaluate: `make_evaluate(...)`.
    """
    env = trainer.env
    low, high = jnp.asarray(env.init_low), jnp.asarray(env.init_high)
    # a constant learning rate, and no curriculum: resets come from the proposals exactly
    ppo_config = dataclasses.replace(trainer.config, anneal_lr=False, curriculum=None)
    q, e, r_max, d = config.proposal.q, config.eval_points, config.max_rounds, low.shape[0]
    acq = AcquisitionParams(beta=config.acquisition[0], xi=config.acquisition[1])

    def init(key: jax.Array, train_state: TrainState, max_rounds=None) -> FineTuneState:
        budget = jnp.asarray(r_max if max_rounds is None else max_rounds, jnp.int32)
        train_state = train_state.replace(
            hparams=train_state.hparams.replace(learning_rate=jnp.asarray(config.learning_rate, jnp.float32)))
        # strong types throughout: a weakly typed leaf (a hand-made or converted policy) would
        # come back strong from the first round and make the second compile again
        train_state = jax.tree.map(lambda a: a if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a.astype(a.dtype),
                                   train_state)
        gp_zeros = jax.tree.map(lambda s: jnp.zeros((r_max,) + s.shape, jnp.float32), _gp_params_template(config, d))
        history = FineTuneHistory(
            success_rate=jnp.zeros(r_max), eval_inits=jnp.zeros((r_max, e, d)), eval_success=jnp.zeros((r_max, e), bool),
            proposals=jnp.zeros((r_max, q, d)), gp_params=gp_zeros, gp_failed=jnp.zeros(r_max, bool),
            trained=jnp.zeros(r_max, bool),
            env_steps=jnp.zeros(r_max, jnp.int32), train_success=jnp.zeros(r_max))
        return FineTuneState(train=train_state, key=key, rounds=jnp.zeros((), jnp.int32),
                             max_rounds=jnp.minimum(budget, r_max),
                             uniform_share=jnp.asarray(config.uniform_share if config.guided else 1.0, jnp.float32),
                             converged=jnp.zeros((), bool), done=budget <= 0, history=history)

    def round_keys(state: FineTuneState):
        k_next, k_round = jax.random.split(state.key)
        return (k_next,) + tuple(jax.random.split(k_round, 4))  # next, inits, episodes, GP, proposals

    def request(state: FineTuneState):
        """(θ [E, d], episode key) this round evaluates the policy on."""
        _, k_inits, k_eval, _, _ = round_keys(state)
        return jax.random.uniform(k_inits, (e, d), minval=low, maxval=high), k_eval

    def record_round(state: FineTuneState, inits, success) -> FineTuneState:
        r, h = state.rounds, state.history
        k_next, _, _, k_gp, k_prop = round_keys(state)
        eval_inits, eval_success = h.eval_inits.at[r].set(inits), h.eval_success.at[r].set(success)
        if config.guided:
            x, y, weights = gp_data(eval_inits, eval_success, r, config.gp_rounds, config.gp_decay)
            gp = fit_gp(k_gp, x, y, low, high, weights=weights, config=config.gp)
            proposals = propose(k_prop, gp, low, high, config.proposal, acq)
            failed = ~(jnp.all(jnp.isfinite(gp.alpha)) & jnp.all(jnp.isfinite(gp.chol))
                       & jnp.all(jnp.isfinite(proposals)))
            fallback = jax.random.uniform(k_prop, (q, d), minval=low, maxval=high)
            proposals = jnp.where(failed, fallback, proposals)
            gp_params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), gp.params)
            rates = h.success_rate.at[r].set(jnp.mean(success))
            converged = has_converged(rates, r + 1, config.window, config.tolerance, e)
        else:  # the control: nothing was evaluated, nothing to model
            gp_params = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), _gp_params_template(config, d))
            proposals, rates, converged = jnp.zeros((q, d)), h.success_rate, jnp.zeros((), bool)
            failed = jnp.zeros((), bool)
        steps_so_far = jnp.where(r > 0, h.env_steps[jnp.maximum(r - 1, 0)], 0)
        history = h.replace(
            success_rate=rates, eval_inits=eval_inits, eval_success=eval_success,
            proposals=h.proposals.at[r].set(proposals), env_steps=h.env_steps.at[r].set(steps_so_far),
            gp_params=jax.tree.map(lambda all_, x: all_.at[r].set(x), h.gp_params, gp_params),
            gp_failed=h.gp_failed.at[r].set(failed))
        return state.replace(key=k_next, rounds=r + 1, converged=converged,
                             done=converged | (r + 1 >= state.max_rounds), history=history)

    def improve_round(state: FineTuneState) -> FineTuneState:
        r, h = state.rounds - 1, state.history
        sampler = proposal_sampler(h.proposals[r], low, high, state.uniform_share)
        # same network and shapes as the specialist; only the reset distribution changes
        chunk = make_chunk(make_trainer(ppo_config, env, sampler, trainer.demo_paths, base=trainer.base),
                           config.updates_per_round)
        train_state, metrics = chunk(state.train)
        rate = jnp.sum(metrics.successes) / jnp.maximum(jnp.sum(metrics.episodes), 1)
        history = h.replace(trained=h.trained.at[r].set(True),
                            env_steps=h.env_steps.at[r].add(config.updates_per_round * ppo_config.batch_size),
                            train_success=h.train_success.at[r].set(rate))
        return state.replace(train=train_state, history=history)

    def unless_done(step):
        # a finished run stays as it is (under vmap, runs finish at different rounds)
        return lambda state, *args: jax.lax.cond(state.done, lambda s, *_: s, step, state, *args)

    record = unless_done(record_round)    # record round `rounds`' outcomes, model, propose; rounds += 1
    improve = unless_done(improve_round)  # fine-tune on the proposals of round `rounds - 1`

    def assess(state: FineTuneState) -> FineTuneState:
        inits, k_eval = request(state)
        if config.guided:  # the GP learns from the θ reached at reset
            result = evaluate(trainer.policy(state.train), inits, k_eval)
            inits, success = result.inits, result.success
        else:
            inits, success = jnp.zeros_like(inits), jnp.zeros(e, bool)
        return record(state, inits, success)

    def round_(state: FineTuneState) -> FineTuneState:
        return improve(assess(state))

    def run(state: FineTuneState) -> FineTuneState:
        return jax.lax.while_loop(lambda s: ~s.done, round_, state)

    return FineTune(config=config, init=init, request=request, record=record, assess=assess, improve=improve,
                    round=round_, run=run)


def share_programs(finetune: FineTune, like: FineTune) -> FineTune:
    """`finetune` with `like`'s PPO rounds (`improve`), so both run one compiled program: the
    proposals and the uniform share are traced state, so runs that differ only in how they
    propose (acquisition, guided or not) train alike. Raises if their rounds differ; both must
    have been made from the same trainer (its environment and θ box are in `like.improve`)."""
    mine, theirs = finetune.config, like.config
    for name in ("updates_per_round", "learning_rate", "max_rounds", "proposal"):
        if name == "proposal":
            if mine.proposal.q != theirs.proposal.q:
                raise ValueError(f"proposal.q differs ({mine.proposal.q} vs {theirs.proposal.q})")
        elif getattr(mine, name) != getattr(theirs, name):
            raise ValueError(f"{name} differs ({getattr(mine, name)} vs {getattr(theirs, name)}): not the same rounds")
    return finetune._replace(improve=like.improve)


def _gp_params_template(config: FineTuneConfig, d: int) -> GPParams:
    """The shapes (`jax.ShapeDtypeStruct`s) of the GPParams `fit_gp` returns for d-D inputs."""
    x = jnp.zeros((2, d))
    return jax.eval_shape(lambda: fit_gp(jax.random.key(0), x, jnp.zeros(2), -jnp.ones(d), jnp.ones(d),
                                         config=config.gp).params)
