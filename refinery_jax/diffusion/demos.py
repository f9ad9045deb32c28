"""Demonstrations without humans: successful episodes of a teacher, for behaviour cloning.

The teacher acts (the privileged scripted insertion, which reads the true goal, or any
episode-loop `Actor` such as a trained specialist, `Teacher`); what is recorded is what the base policy will see and do: the environment's observation
(the noisy goal, as in deployment) before each step and the teacher's action. Episodes
are the environment's own (`episode_steps` control steps from a uniform θ of the task's
box) and only successful ones are kept. `collect` runs batches until it has `num_demos`
and reports how many rollouts it took.

Saved as one `.npz` (arrays plus a JSON `meta`: task, embodiment, observation and action
sizes, teacher, seed, attempts, teacher success); `load` checks the meta against the
environment it will train for and refuses a mismatch with a message naming the field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from typing import Any, NamedTuple

import jax
import numpy as np

from refinery_jax.envs.assembly_env import AssemblyEnv
from refinery_jax.envs.episodes import Actor, run_episode
from refinery_jax.envs.samplers import env_uniform
from refinery_jax.envs.scripted import scripted_actor



class Teacher(NamedTuple):
    name: str      # recorded in the demos' meta (e.g. "scripted", "specialist runs/x seed 0")
    actor: Actor   # acts in the episode loop (privileged or not)
    params: Any


def scripted_teacher(env: AssemblyEnv) -> Teacher:
    """The scripted insertion (reads the true goal; `envs.scripted`)."""
    return Teacher(name="scripted", actor=scripted_actor(env), params=False)


@dataclasses.dataclass(frozen=True)
class DemoSet:
    observations: np.ndarray   # [N, T, O] float32
    actions: np.ndarray        # [N, T, A] float32
    inits: np.ndarray          # [N, d] the θ each demo started from
    keys: np.ndarray           # [N, 2] uint32: each demo's episode key (jax.random.wrap_key_data), to replay it
    meta: dict                 # task, embodiment, sizes, teacher, seed, attempts, teacher_success

    def __len__(self) -> int:
        return self.observations.shape[0]


def _meta_for(env: AssemblyEnv) -> dict:
    return {"task": env.config.task, "embodiment": env.config.embodiment,
            "observation_size": int(env.observation_size), "action_size": int(env.action_size),
            "episode_steps": int(env.config.episode_steps)}


def collect(env: AssemblyEnv, num_demos: int, seed: int = 0, teacher: Teacher | None = None, batch: int = 256,
            max_attempts: int | None = None) -> DemoSet:
    """Roll out `teacher` (default the scripted insertion) in batches from uniform θ until
    `num_demos` episodes succeeded.

    ValueError for a bad request (before compiling); RuntimeError when `max_attempts`
    (default 20 x num_demos) rollouts give fewer successes, with the success seen."""
    teacher = scripted_teacher(env) if teacher is None else teacher
    if not isinstance(teacher, Teacher):
        raise ValueError(f"teacher must be a demos.Teacher (name, actor, params), got {teacher!r}")
    if num_demos < 1 or batch < 1:
        raise ValueError(f"num_demos and batch must be positive, got {num_demos} and {batch}")
    max_attempts = 20 * num_demos if max_attempts is None else max_attempts
    actor, params, sampler = teacher.actor, teacher.params, env_uniform(env)

    @jax.jit
    def rollouts(key):
        k_init, k_run = jax.random.split(key)
        inits = jax.vmap(sampler)(jax.random.split(k_init, batch))
        keys = jax.random.split(k_run, batch)
        episodes = jax.vmap(lambda k, i: run_episode(env, actor, params, k, i, record=True))(keys, inits)
        return inits, jax.random.key_data(keys), episodes.success, episodes.trajectory

    kept, attempts, successes = [], 0, 0
    key = jax.random.key(seed)
    while successes < num_demos and attempts < max_attempts:
        key, k = jax.random.split(key)
        inits, keys, success, (obs, actions) = jax.device_get(rollouts(k))
        attempts += batch
        successes += int(success.sum())
        kept.append((inits[success], keys[success], obs[success], actions[success]))
    if successes < num_demos:
        raise RuntimeError(f"the {teacher.name} teacher succeeded in {successes} of {attempts} rollouts on {env.config.task}; "
                           f"{num_demos} demos were asked for")
    inits, keys, obs, actions = (np.concatenate(parts)[:num_demos] for parts in zip(*kept))
    meta = dict(_meta_for(env), teacher=teacher.name, seed=seed, attempts=attempts,
                teacher_success=successes / attempts, num_demos=num_demos)
    return DemoSet(observations=obs.astype(np.float32), actions=actions.astype(np.float32), inits=inits, keys=keys,
                   meta=meta)


def save(demos: DemoSet, path) -> pathlib.Path:
    """Write `path` (.npz); refuses to overwrite an existing file."""
    path = pathlib.Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"demo files are .npz, got {path}")
    if path.exists():
        raise FileExistsError(f"{path} exists; demos are not overwritten (choose another path or remove it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, observations=demos.observations, actions=demos.actions, inits=demos.inits, keys=demos.keys,
             meta=np.array(json.dumps(demos.meta)))
    return path


def load(path, env: AssemblyEnv | None = None) -> DemoSet:
    """Read a demo file; with `env`, refuse one recorded for another task or layout (ValueError)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no demo file at {path}")
    with np.load(path) as data:
        demos = DemoSet(observations=data["observations"], actions=data["actions"], inits=data["inits"],
                        keys=data["keys"], meta=json.loads(str(data["meta"])))
    if len(demos) == 0:
        raise ValueError(f"{path} holds no demonstrations")
    if env is not None:
        expected = _meta_for(env)
        wrong = [f"{k}: file {demos.meta.get(k)!r}, environment {v!r}" for k, v in expected.items()
                 if k != "episode_steps" and demos.meta.get(k) != v]
        if wrong:
            raise ValueError(f"{path} was recorded for another setting: " + "; ".join(wrong))
    return demos


def digest(demos: DemoSet) -> str:
    """Short hash of the demos' content (arrays and meta): a run records which demos it
    cloned, so a moved file still resumes and another file at the same path is refused."""
    h = hashlib.sha256(json.dumps(demos.meta, sort_keys=True).encode())
    for array in (demos.observations, demos.actions, demos.inits, demos.keys):
        h.update(str((array.dtype, array.shape)).encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:16]


def chunk_dataset(demos: DemoSet, prediction: int) -> tuple[np.ndarray, np.ndarray]:
    """(observations [M, O], action chunks [M, prediction, A]): one sample per demo step, the
    chunk being the next `prediction` actions, padded past the episode's end with its last
    action (the teacher holds still there)."""
    if prediction < 1:
        raise ValueError(f"prediction must be positive, got {prediction}")
    n, steps, a = demos.actions.shape
    padded = np.concatenate([demos.actions, np.repeat(demos.actions[:, -1:], prediction - 1, axis=1)], axis=1)
    index = np.arange(steps)[:, None] + np.arange(prediction)[None]          # [T, P]
    chunks = padded[:, index]                                                 # [N, T, P, A]
    return demos.observations.reshape(n * steps, -1), chunks.reshape(n * steps, prediction, a)
