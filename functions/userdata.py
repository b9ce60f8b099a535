"""A user's own data: where a signup's `data_ref` may point, and reading it for the recipe.

`data_ref` names an object in the user-data bucket (IML_USER_DATA_BUCKET; embedded: WORKDIR/buckets/user-data),
as a plain object name or as gs://BUCKET/NAME of that bucket, under the user's own folder `<user_id>/`: the
app backend writes a user's data there, a signup cannot read another user's, and a user's deletion deletes
the folder. Refusals are InvalidUserData naming the rule broken, never quoting the reference or the data.
"""
from __future__ import annotations

import re

from functions import names
from functions.recipes import InvalidUserData, Recipe, UserData
from infra.bootstrap import Ports
from infra.errors import ObjectMissing

_OBJECT_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$")


def object_name(data_ref: str, user_id: str, bucket: str | None) -> str:
    """The object `data_ref` names, when it may be read for `user_id`."""
    name = data_ref
    if data_ref.startswith("gs://"):
        named_bucket, _, name = data_ref[len("gs://"):].partition("/")
        if bucket is None or named_bucket != bucket:
            raise InvalidUserData("data_ref points outside the user-data bucket")
    if not _OBJECT_NAME.fullmatch(name) or len(name) > 1024:
        raise InvalidUserData("data_ref is not a plain object name (letters, digits, . _ - and /; no '..', no "
                              "leading '/' or '.')")
    if not name.startswith(names.user_data_folder(user_id)):
        raise InvalidUserData("data_ref must name an object in the user's own folder (<user_id>/...)")
    return name


def read(ports: Ports, recipe: Recipe, user_id: str, data_ref: str | None) -> UserData:
    """The user's data, checked against the recipe; InvalidUserData naming the problem."""
    if data_ref is None:
        raise InvalidUserData(f"the signup has no data_ref: recipe {recipe.name!r} fine-tunes on the user's data")
    name = object_name(data_ref, user_id, (ports.settings.buckets or {}).get("user-data"))
    found = [info for info in ports.user_data.list(name) if info.name == name]
    if not found:
        raise InvalidUserData("data_ref names no object in the user-data bucket")
    if found[0].size > recipe.max_data_bytes:  # refused before it is downloaded
        raise InvalidUserData(f"the data object holds {found[0].size} bytes, more than recipe {recipe.name!r} takes "
                              f"({recipe.max_data_bytes})")
    try:
        raw = ports.user_data.get(name)
    except ObjectMissing:
        raise InvalidUserData("data_ref names no object in the user-data bucket") from None
    return recipe.read_user_data(raw)
