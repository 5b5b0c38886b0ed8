"""The few fields of an AdmissionReview the hot path reads, decoded without the rest.

A Pod review is mostly what the webhook never looks at: ``managedFields``, env, probes,
resources, security contexts, volumes' sources. Decoding all of it into dicts (what
:func:`webhook.admission.wire.parse_review` does, with orjson) costs three times what
decoding only the request's identity, the containers' names and images, the pull secrets,
the labels and the annotations costs with msgspec, which skips the rest while still
checking it is JSON. The hot path (:meth:`webhook.admission.handler.Handler.answer_now`)
answers from this view whenever the answer is a remembered one; anything else goes on
to the full decode and the handler's complete path.

Nothing here judges the review: a field of an unexpected type, or a body the view cannot
decode, is simply "no view" (``None``), and the full path answers it exactly as it always
did (with a 400 for what is not a review). Fields whose values the handler checks itself
are typed ``Any`` so that they keep orjson's plain values and the checks stay where they
are; only the containers of values (the Pod, its spec, its lists of objects) are Structs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec


class NamedView(msgspec.Struct):
    """An entry of ``imagePullSecrets``."""

    name: Any = None


class ContainerView(msgspec.Struct):
    name: Any = None
    image: Any = None


class VolumeView(msgspec.Struct):
    #: Only whether the key is there: an image volume is planned on its own path.
    image: Any | msgspec.UnsetType = msgspec.UNSET


class MetadataView(msgspec.Struct):
    namespace: Any = None
    labels: Any = None
    annotations: Any = None


class SpecView(msgspec.Struct):
    initContainers: list[ContainerView] | None = None
    containers: list[ContainerView] | None = None
    ephemeralContainers: list[ContainerView] | None = None
    volumes: list[VolumeView] | None = None
    imagePullSecrets: list[NamedView] | None = None


class PodView(msgspec.Struct):
    metadata: MetadataView | None = None
    spec: SpecView | None = None


class RequestView(msgspec.Struct):
    uid: Any = None
    kind: Any = None
    resource: Any = None
    subResource: Any = None
    namespace: Any = None
    operation: Any = None
    dryRun: Any = None
    object: PodView | None = None


class ReviewView(msgspec.Struct):
    apiVersion: Any = None
    kind: Any = None
    request: RequestView | None = None


_REVIEW = msgspec.json.Decoder(ReviewView)
#: What a body the view cannot stand for raises (RecursionError: nesting deeper than the
#: decoder's stack, which orjson refuses as well).
_NO_VIEW = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


def decode_view(body: bytes) -> ReviewView | None:
    """The view of ``body``, or ``None`` when only the full decode can tell what it is.

    Never a view of a body orjson would refuse: msgspec checks the syntax of what it skips
    but not the encoding of the strings in it, so a body that is not all ASCII must be valid
    UTF-8 (the API server sends UTF-8; this is one pass over the bytes, only for such bodies).
    """
    if not body.isascii():
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        return _REVIEW.decode(body)
    except _NO_VIEW:
        return None


def pod_view(pod: Mapping[str, Any]) -> PodView | None:
    """The view of a Pod already decoded into dicts (the handler's complete path), or ``None``."""
    try:
        return msgspec.convert(pod, PodView)
    except _NO_VIEW:
        return None


__all__ = ["ContainerView", "PodView", "RequestView", "ReviewView", "decode_view", "pod_view"]
