"""What a user reads when an Earth Engine call they wait on fails: EE's refusal or an
unreachable EE, each as one line that says what to do (engine.ee_adapter)."""

from __future__ import annotations

from typing import Any

import ee
import pytest

from engine import ee_adapter
from engine.errors import EarthEngineError, EarthEngineUnreachable, PreviewError


class Failing:
    """Stands for an ee.Image / ee.ImageCollection whose every call raises ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def _raise(self, *args: Any) -> Any:
        raise self.error

    getInfo = getDownloadURL = getThumbURL = _raise


REFUSED = ee.EEException("Image.load: Image asset 'x' not found.")
UNREACHABLE = ConnectionError("Connection refused")


@pytest.mark.parametrize(
    ("call", "refusal", "refused_line", "purpose"),
    [
        (
            lambda obj: ee_adapter.collection_features(obj),
            EarthEngineError,
            "Earth Engine could not list the collection: Image.load",
            "to list the collection",
        ),
        (
            lambda obj: ee_adapter.sample_url(obj, {}),
            PreviewError,
            "Earth Engine could not sample the image for the stretch: Image.load: Image asset "
            "'x' not found.; pass --min and --max",
            "for the preview",
        ),
        (
            lambda obj: ee_adapter.thumbnail_url(obj, {}),
            PreviewError,
            "Earth Engine could not make the preview: Image.load",
            "for the preview",
        ),
    ],
)
def test_a_refusal_and_an_unreachable_earth_engine_are_one_line_each(
    call: Any, refusal: type[Exception], refused_line: str, purpose: str
) -> None:
    with pytest.raises(refusal) as refused:
        call(Failing(REFUSED))
    assert str(refused.value).startswith(refused_line)
    assert refused.value.__cause__ is REFUSED

    with pytest.raises(EarthEngineUnreachable) as unreachable:
        call(Failing(UNREACHABLE))
    assert str(unreachable.value) == (
        f"could not reach Earth Engine {purpose}: Connection refused. Check the network and "
        "the proxy (--proxy or HTTPS_PROXY)"
    )


def test_other_errors_pass_through_unchanged() -> None:
    with pytest.raises(KeyError):
        ee_adapter.thumbnail_url(Failing(KeyError("bug")), {})
