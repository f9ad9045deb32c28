"""Off-policy learning for a robot's budget of experience: RLPD-style SAC (`sac`) and its
demonstration and online replay buffers (`replay`, on flashbax)."""
