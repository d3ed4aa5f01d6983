"""Resolution: each declared task's settings, inherited document ``defaults`` -> room ->
task (``image`` field by field, ``streams`` and ``storage`` as a whole), made into the
``StartSnapshotRequest`` that starts it. What is built is shared wherever tasks declare
the same thing, without validating again (the manifest's values were validated as read).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from .. import api
from ..yamlsource import Location
from .schema import CustomStorage, Image, Settings, StorageSpec, Stream, TosStorage


@dataclass(frozen=True, slots=True)
class DesiredTask:
    """One declared task: its address ``APP/ROOM/TASK`` and the request that starts it."""

    address: str
    request: api.StartSnapshotRequest
    location: Location


_DEFAULT_IMAGE = api.ImageConfig.model_construct()
_IMAGE_FIELDS = ("format", "width", "height", "interval")


def _inherit(name: str, levels: tuple[Settings, ...]) -> Any:
    """The value of the nearest level that sets ``name`` (an explicit null counts as set)."""
    for settings in levels:
        if name in settings.model_fields_set:
            return getattr(settings, name)
    return None


class _Inherited:
    """What a room's tasks inherit from the room and the document defaults, worked out once per room."""

    __slots__ = ("business_id", "image", "max_idle_time", "storage", "streams")

    def __init__(self, defaults: Settings, room: Settings):
        levels = (room, defaults)
        self.storage = _inherit("storage", levels)
        self.max_idle_time = _inherit("max_idle_time", levels)
        self.business_id = _inherit("business_id", levels)
        self.streams = _inherit("streams", levels)
        images = [s.image for s in levels if s.image is not None]
        #: Per image field, the nearest level's value (None: not set above the task).
        self.image = tuple(
            next((v for v in (getattr(i, name) for i in images) if v is not None), None) for name in _IMAGE_FIELDS
        )


def _builder(cls: type[BaseModel]):
    """A faster ``cls.model_construct`` for values of every field, given in field order.

    The result is what ``model_construct(**values)`` builds (same ``__dict__``,
    every field in ``model_fields_set``), except that all the instances of a
    class share one fields-set object: they are frozen, and pydantic copies
    that set before changing it (``model_copy``), so nothing mutates it. It
    saves a set per instance, a good part of the memory of a large load.
    """
    names = tuple(cls.model_fields)
    assert cls.model_config.get("frozen") and cls.model_config.get("extra") != "allow"
    assert not cls.__pydantic_post_init__ and not cls.__pydantic_root_model__
    fields_set = set(names)
    new = cls.__new__
    set_attribute = object.__setattr__

    def build(*values: Any) -> Any:
        model = new(cls)
        set_attribute(model, "__dict__", dict(zip(names, values)))
        set_attribute(model, "__pydantic_fields_set__", fields_set)
        set_attribute(model, "__pydantic_extra__", None)
        set_attribute(model, "__pydantic_private__", None)
        return model

    return build


_make_start_request = _builder(api.StartSnapshotRequest)
_make_image_config = _builder(api.ImageConfig)
_make_target_streams = _builder(api.TargetStreams)
_make_stream = _builder(api.Stream)


class _Requests:
    """Builds one document's requests, each part built once however many tasks share it."""

    def __init__(self) -> None:
        # id(object) -> (object, result): the object is kept so the id stays its own.
        self.storage_cache: dict[int, tuple[Any, api.StorageConfig]] = {}
        self.streams_cache: dict[int, tuple[Any, api.TargetStreams]] = {}
        self.image_cache: dict[tuple, api.ImageConfig] = {}

    def request(
        self, app_id: str, room_id: str, task_id: str, inherited: _Inherited, task: Settings, storage: StorageSpec
    ) -> api.StartSnapshotRequest:
        """The task's request; ``storage`` is the one it uses (its own or inherited, a profile's block)."""
        # The nearest level that sets a field wins (an explicit null counts as set).
        given = task.__pydantic_fields_set__
        max_idle_time = task.max_idle_time if "max_idle_time" in given else inherited.max_idle_time
        return _make_start_request(
            app_id,
            task.business_id if "business_id" in given else inherited.business_id,
            room_id,
            task_id,
            self.target_streams(task.streams if "streams" in given else inherited.streams),
            api.DEFAULT_MAX_IDLE_TIME if max_idle_time is None else max_idle_time,
            self.image_config(inherited.image, task.image),
            self.storage_config(storage),
        )

    def image_config(self, inherited: tuple, image: Image | None) -> api.ImageConfig:
        """Each image field from the nearest level that sets it, else the API's default."""
        if image is None:
            values = inherited
        else:
            values = tuple(
                own if own is not None else base
                for own, base in zip((image.format, image.width, image.height, image.interval), inherited)
            )
        config = self.image_cache.get(values)
        if config is None:
            config = self.image_cache[values] = _make_image_config(
                *(
                    getattr(_DEFAULT_IMAGE, name) if value is None else value
                    for name, value in zip(_IMAGE_FIELDS, values)
                )
            )
        return config

    def target_streams(self, streams: list[Stream] | None) -> api.TargetStreams | None:
        if not streams:
            return None
        cached = self.streams_cache.get(id(streams))
        if cached is not None and cached[0] is streams:
            return cached[1]
        result = _make_target_streams([_make_stream(s.index, s.user_id, s.stream_type) for s in streams])
        self.streams_cache[id(streams)] = (streams, result)
        return result

    def storage_config(self, spec: StorageSpec) -> api.StorageConfig:
        cached = self.storage_cache.get(id(spec))
        if cached is not None and cached[0] is spec:
            return cached[1]
        if isinstance(spec, TosStorage):
            tos = api.TosConfig.model_construct(account_id=spec.account_id, region=spec.region, bucket=spec.bucket)
            config = api.StorageConfig.model_construct(type=api.StorageType.tos.value, tos_config=tos)
        elif isinstance(spec, CustomStorage):
            custom = api.CustomConfig.model_construct(
                vendor=spec.vendor,
                region=spec.region,
                bucket=spec.bucket,
                access_key=spec.access_key,
                secret_key=spec.secret_key,
            )
            config = api.StorageConfig.model_construct(type=api.StorageType.custom.value, custom_config=custom)
        else:
            imagex = api.VeImageXConfig.model_construct(
                account_id=spec.account_id, region=spec.region, service_id=spec.service_id
            )
            config = api.StorageConfig.model_construct(type=api.StorageType.veimagex.value, ve_image_x_config=imagex)
        self.storage_cache[id(spec)] = (spec, config)
        return config
