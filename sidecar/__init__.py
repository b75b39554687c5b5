"""gpuscope sidecar: always-on beside a training job (see docs/sidecar.md)."""
