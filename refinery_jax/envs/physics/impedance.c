// The task-space impedance law of refinery_jax.envs.control.impedance_torques, as a MuJoCo
// control callback (mjcb_control), so that C MuJoCo evaluates it at every physics substep
// on the batch's own threads, with no Python between substeps.
//
// Everything per world lives in mjData.userdata (layout: c_backend.USERDATA_* offsets):
// a marker, the robot's dof count and fingertip body, the target pose, the gains and
// limits, and the controller's memory: the fingertip pose, Jacobian and mass matrix of
// the start of the previous substep. The law reads that memory (the controller lags the
// state by one substep, as on MJX), then stores the current kinematics for the next
// substep. A world whose memory is not valid yet (freshly placed) uses the current
// kinematics, as the first substep after placement does on the other backends.
// Worlds of other models (no marker) are left alone: the callback is process-wide.

#include <math.h>
#include <string.h>

#include <mujoco/mujoco.h>

#define MARKER 7130.25  // userdata[0] of a world this law drives
enum {
  U_MARKER = 0, U_DOFS = 1, U_BODY = 2, U_VALID = 3,
  U_POS_TARGET = 4, U_QUAT_TARGET = 7, U_KP = 11, U_KD = 17, U_KP_NULL = 23, U_HOME = 24,
};
#define MAX_DOFS 16

// the layout's size for n dofs: header, home and limits, then memory (pos, quat, jac 6n, mass nn)
int refinery_impedance_userdata_size(int n) { return U_HOME + 2 * n + 7 + 6 * n + n * n; }

static void quat_mul(const mjtNum a[4], const mjtNum b[4], mjtNum out[4]) {
  out[0] = a[0] * b[0] - a[1] * b[1] - a[2] * b[2] - a[3] * b[3];
  out[1] = a[0] * b[1] + a[1] * b[0] + a[2] * b[3] - a[3] * b[2];
  out[2] = a[0] * b[2] - a[1] * b[3] + a[2] * b[0] + a[3] * b[1];
  out[3] = a[0] * b[3] + a[1] * b[2] - a[2] * b[1] + a[3] * b[0];
}

// world-frame rotation vector taking q to q_target (rotations.axis_angle_error)
static void axis_angle_error(const mjtNum q_target[4], const mjtNum q[4], mjtNum out[3]) {
  mjtNum conj[4] = {q[0], -q[1], -q[2], -q[3]}, e[4];
  quat_mul(q_target, conj, e);
  if (e[0] < 0) for (int i = 0; i < 4; i++) e[i] = -e[i];
  mjtNum s = sqrt(e[1] * e[1] + e[2] * e[2] + e[3] * e[3] + 1e-12);
  mjtNum scale = 2.0 * atan2(s, e[0]) / s;
  for (int i = 0; i < 3; i++) out[i] = e[1 + i] * scale;
}

// solve A x = b for symmetric positive definite A (k x k, destroyed), in place in b
static void spd_solve(mjtNum* a, mjtNum* b, int k) {
  mju_cholFactor(a, k, 0);
  mju_cholSolve(b, a, b, k);
}

void refinery_impedance(const mjModel* m, mjData* d) {
  mjtNum* u = d->userdata;
  if (m->nuserdata <= U_HOME || u[U_MARKER] != MARKER) return;
  int n = (int)u[U_DOFS], body = (int)u[U_BODY], nv = m->nv;
  if (n < 1 || n > MAX_DOFS || n > m->nu || m->nuserdata < refinery_impedance_userdata_size(n)) return;
  const mjtNum *home = u + U_HOME, *limit = home + n;
  mjtNum* memory = u + U_HOME + 2 * n;  // pos 3, quat 4, jac 6 x n, mass n x n
  int size = 7 + 6 * n + n * n;

  // the current kinematics, in the memory's layout
  mj_markStack(d);
  mjtNum* jacp = mj_stackAllocNum(d, 3 * nv);
  mjtNum* jacr = mj_stackAllocNum(d, 3 * nv);
  mjtNum* full = mj_stackAllocNum(d, nv * nv);
  mjtNum* now = mj_stackAllocNum(d, size);
  mj_jacBody(m, d, jacp, jacr, body);
  mj_fullM(m, d, full);
  mju_copy(now, d->xpos + 3 * body, 3);
  mju_copy(now + 3, d->xquat + 4 * body, 4);
  for (int j = 0; j < n; j++) {
    for (int i = 0; i < 3; i++) {
      now[7 + i * n + j] = jacp[i * nv + j];
      now[7 + (i + 3) * n + j] = jacr[i * nv + j];
    }
    for (int i = 0; i < n; i++) now[7 + 6 * n + i * n + j] = full[i * nv + j];
  }

  // the law, on the previous substep's kinematics (this one's if there is none yet)
  const mjtNum* k = u[U_VALID] != 0 ? memory : now;
  const mjtNum *pos = k, *quat = k + 3, *jac = k + 7, *mass = k + 7 + 6 * n;
  const mjtNum *qpos = d->qpos, *qvel = d->qvel;  // the robot's joints come first, one qpos each
  mjtNum error[6], wrench[6], tau[MAX_DOFS];
  for (int i = 0; i < 3; i++) error[i] = u[U_POS_TARGET + i] - pos[i];
  axis_angle_error(u + U_QUAT_TARGET, quat, error + 3);
  for (int i = 0; i < 6; i++) {
    mjtNum velocity = 0;
    for (int j = 0; j < n; j++) velocity += jac[i * n + j] * qvel[j];
    wrench[i] = u[U_KP + i] * error[i] - u[U_KD + i] * velocity;
  }
  for (int j = 0; j < n; j++) {
    tau[j] = 0;
    for (int i = 0; i < 6; i++) tau[j] += jac[i * n + j] * wrench[i];
  }
  if (n > 6) {
    // null-space posture term: (I - J^T Lambda J M^-1) p with p = M (kp_null (home - q) - kd_null qdot),
    // computed as p - J^T (J M^-1 J^T + 1e-6 I)^-1 (M^-1 J^T)^T p: one solve with M, one with the 6 x 6
    mjtNum kp_null = u[U_KP_NULL], kd_null = 2.0 * sqrt(kp_null);
    mjtNum pull[MAX_DOFS], posture[MAX_DOFS], lambda_inv[36], y[6];
    mjtNum* factor = mj_stackAllocNum(d, n * n);
    mjtNum* minv_jt = mj_stackAllocNum(d, n * 6);  // column c: M^-1 (row c of J)
    for (int j = 0; j < n; j++) pull[j] = kp_null * (home[j] - qpos[j]) - kd_null * qvel[j];
    for (int i = 0; i < n; i++) {
      posture[i] = 0;
      for (int j = 0; j < n; j++) posture[i] += mass[i * n + j] * pull[j];
    }
    mju_copy(factor, mass, n * n);
    mju_cholFactor(factor, n, 0);
    for (int c = 0; c < 6; c++) mju_cholSolve(minv_jt + c * n, factor, jac + c * n, n);
    for (int r = 0; r < 6; r++) {
      for (int c = 0; c < 6; c++) {
        mjtNum sum = 0;
        for (int j = 0; j < n; j++) sum += jac[r * n + j] * minv_jt[c * n + j];
        lambda_inv[r * 6 + c] = sum + (r == c ? 1e-6 : 0);
      }
      y[r] = 0;
      for (int j = 0; j < n; j++) y[r] += minv_jt[r * n + j] * posture[j];
    }
    spd_solve(lambda_inv, y, 6);
    for (int j = 0; j < n; j++) {
      mjtNum back = 0;
      for (int i = 0; i < 6; i++) back += jac[i * n + j] * y[i];
      tau[j] += posture[j] - back;
    }
  }
  for (int j = 0; j < n; j++) d->ctrl[j] = tau[j] < -limit[j] ? -limit[j] : (tau[j] > limit[j] ? limit[j] : tau[j]);

  mju_copy(memory, now, size);
  u[U_VALID] = 1;
  mj_freeStack(d);
}
