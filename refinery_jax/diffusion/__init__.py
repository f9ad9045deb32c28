"""Diffusion base policies over action chunks (ResiP's base, issue 19).

- `schedule`: the DDPM cosine noise schedule, noising, DDIM sampling (ε-prediction);
- `unet`: the conditional 1-D U-Net that predicts ε for a chunk of actions;
- `chunks`: per-environment action queues that re-plan inside jit (packed re-planning);
- `demos`: successful teacher episodes (observation the base sees, action), saved and checked;
- `policy`: min-max normalisation, behaviour cloning (DDPM loss, AdamW, EMA) and the DDIM planner.
"""
