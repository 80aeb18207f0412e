"""Values of chorushead.stages' registry (stages/__init__.py) that mutation testing checks
(docs/mutation-survivors.md, `scripts/mutation.sh stages_registry`)."""
from __future__ import annotations

import pytest

from chorushead.stages import STAGE_MODULES, get_stage
from chorushead.stages.base import Stage


def test_every_registered_name_is_its_stages_own_name_in_pipeline_order():
    assert list(STAGE_MODULES) == ["ingest", "screen", "fingerprint", "bgm_split", "duet_split", "vad", "crop",
                                   "contiguity", "fit", "smooth", "assign", "pack"]
    for name, module in STAGE_MODULES.items():
        assert module == f"chorushead.stages.{name}"
        stage = get_stage(name)
        assert isinstance(stage, Stage) and stage.name == name


def test_an_unknown_stage_is_one_line_listing_the_known_ones():
    with pytest.raises(KeyError) as e:
        get_stage("vda")
    assert e.value.args[0] == ("unknown stage 'vda'; known: ingest, screen, fingerprint, bgm_split, duet_split, "
                               "vad, crop, contiguity, fit, smooth, assign, pack")
