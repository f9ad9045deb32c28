"""Running policies on a robot: the backend protocol (`backend`) and the safety envelope in
front of every backend (`safety`). Backends for outside systems live in `interop/`
(`interop.franky`)."""
