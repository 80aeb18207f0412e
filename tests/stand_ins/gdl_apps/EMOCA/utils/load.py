"""Stand-in for gdl_apps.EMOCA.utils.load (tests only): same signature and return shape as EMOCA's."""
from pathlib import Path


def load_model(path_to_models, run_name, stage, relative_to_path=None, replace_root_path=None,
               mode="best", allow_stage_revert=False):
    run_path = Path(path_to_models) / run_name
    cfg = run_path / "cfg.yaml"
    if not cfg.exists():   # the real one opens this file too
        raise FileNotFoundError(str(cfg))
    assert stage in ("coarse", "detail"), stage
    from gdl.standin import StandInEmoca
    return StandInEmoca(), {"run_name": run_name, "stage": stage}
