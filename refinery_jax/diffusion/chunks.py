"""Chunked execution inside jit: every environment keeps its own queue of planned actions.

A chunk policy plans `prediction` actions at once and executes the first `execution` of
them (ResiP: 32 and 8). Here each environment re-plans on its own, when its queue runs out
or when its episode restarts, so environments need not run in lockstep (PPO's staggered
starts and auto-reset) and a new episode never executes the last episode's plan. ResiP's
reference instead keeps one queue for all environments, re-plans all of them together and
starts each chunk from the previous chunk's unexecuted actions re-noised to t = 50; we
plan every chunk from fresh noise, so a plan depends only on its environment's observation
and key (the same in any batch), which is what makes Refinery's paired evaluation and the
packed re-planning below exact.

Cost: with staggered environments about B / execution of them re-plan at each step, so
only those are planned, packed into a small batch (`slots`, twice that plus 2) and
scattered back; when more need a plan at once (e.g. all at the first step), the whole
batch is planned. Each environment's plan uses `fold_in(key, environment index)`, so
the packed and whole-batch paths give identical actions.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct

# plan(keys [k], obs [k, O]) -> chunks [k, prediction, A]
Planner = Callable[[jax.Array, jax.Array], jax.Array]


@struct.dataclass
class ActionQueue:
    actions: jax.Array  # [B, execution, A] the planned actions still to execute (from `index` on)
    index: jax.Array    # [B] int32: the next action to execute; == execution: empty


def empty_queue(batch: int, execution: int, action_size: int) -> ActionQueue:
    """Queues that re-plan at the first step."""
    return ActionQueue(actions=jnp.zeros((batch, execution, action_size)),
                       index=jnp.full((batch,), execution, jnp.int32))


def replan_slots(batch: int, execution: int) -> int:
    return min(batch, 2 * -(-batch // execution) + 2)


def next_actions(plan: Planner, key: jax.Array, queue: ActionQueue, obs: jax.Array, restart: jax.Array):
    """(actions [B, A], queue after taking them): environments whose queue is empty or whose
    episode restarts (`restart` [B] bool, e.g. the first step of an episode) re-plan from `obs`."""
    batch, execution = queue.actions.shape[:2]
    need = restart | (queue.index >= execution)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch))
    slots = replan_slots(batch, execution)

    def keep(q):
        return q

    def plan_few(q):
        (where,) = jnp.nonzero(need, size=slots, fill_value=batch)  # out of range: dropped below
        chunks = plan(keys[jnp.minimum(where, batch - 1)], obs[jnp.minimum(where, batch - 1)])
        return ActionQueue(actions=q.actions.at[where].set(chunks[:, :execution], mode="drop"),
                           index=q.index.at[where].set(0, mode="drop"))

    def plan_all(q):
        chunks = plan(keys, obs)[:, :execution]
        return ActionQueue(actions=jnp.where(need[:, None, None], chunks, q.actions),
                           index=jnp.where(need, 0, q.index))

    count = jnp.sum(need)
    branch = jnp.where(count == 0, 0, jnp.where(count <= slots, 1, 2))
    queue = jax.lax.switch(branch, [keep, plan_few, plan_all], queue)
    actions = queue.actions[jnp.arange(batch), queue.index]
    return actions, queue.replace(index=queue.index + 1)
