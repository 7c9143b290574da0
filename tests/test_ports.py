"""The Docker and Kubernetes ports' answers when the other side says no (no daemon, no cluster)."""

from __future__ import annotations

import docker.errors
import pytest
from kubernetes.client.exceptions import ApiException

from fsm_cleaner.docker_runtime import Docker
from fsm_cleaner.kube import Kube
from fsm_cleaner.runtime import Image


class _Gone:
    """A Docker API client whose image was removed by someone else meanwhile."""

    def remove_image(self, ref: str, force: bool = False) -> None:
        raise docker.errors.NotFound(f"No such image: {ref}")


def test_an_image_someone_else_removed_is_not_counted_as_removed_by_us() -> None:
    why = Docker(lambda: _Gone()).remove_image(Image("sha256:" + "a" * 64, 0, 10, ("app:1",)))
    assert why is not None and "already gone" in why


class _NoEvents:
    def create_namespaced_event(self, *args: object, **kwargs: object) -> None:
        raise ApiException(status=403, reason="Forbidden")


def test_a_failed_event_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="fsm_cleaner"):
        Kube(_NoEvents(), "node-1").event("Cordoned", "fsm-cleaner: cordon")  # type: ignore[arg-type]
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "could not emit event Cordoned" in caplog.text and "403" in caplog.text
