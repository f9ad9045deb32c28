"""Bridges to outside systems, one module each; their third-party packages are the optional
`interop` extra (`pip install -e '.[interop]'`) and are imported inside these modules only.

- `rl_games`: rl_games 1.6.5 checkpoints (Isaac Lab's AutoMate and Factory) <-> Flax policies.
"""
