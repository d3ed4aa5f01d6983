"""Storage ``Region`` codes: the vendor's table ("Region 对照表", RTC server API appendix,
2025-04), where it is known. A manifest may name a region (``region: cn-beijing``) where the
table is known (TOS, Amazon S3, Alibaba OSS), or give the API's integer anywhere; codes the
table marks not supported ("暂不支持") are refused. Where it is not known (Huawei OBS, Tencent
COS, Qiniu Kodo, veImageX), only integers are taken and no name is shown: none is invented.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RegionTable:
    """One storage's codes: ``names`` by code, and the codes the API does not support."""

    storage: str
    names: dict[int, str]
    unsupported: frozenset[int] = field(default_factory=frozenset)

    def code_of(self, name: str) -> int | None:
        return next((code for code, known in self.names.items() if known == name), None)


TOS = RegionTable("TOS", {0: "cn-beijing", 1: "cn-guangzhou", 2: "cn-shanghai", 3: "ap-southeast-1"})
S3 = RegionTable(
    "Amazon S3",
    {
        0: "us-east-1",
        1: "us-east-2",
        2: "us-west-1",
        3: "us-west-2",
        4: "eu-west-1",
        5: "eu-west-2",
        6: "eu-west-3",
        7: "eu-central-1",
        8: "ap-southeast-1",
        9: "ap-southeast-2",
        10: "ap-northeast-1",
        11: "ap-northeast-2",
        12: "sa-east-1",
        13: "ca-central-1",
        14: "ap-south-1",
        15: "cn-north-1",
        16: "cn-northwest-1",
        17: "us-gov-east-1",
        18: "ap-east-1",
        19: "eu-south-1",
        20: "ap-northeast-3",
        21: "eu-north-1",
        22: "me-south-1",
        23: "us-gov-west-1",
        24: "af-south-1",
    },
    frozenset({7, 9, 17, 23}),
)
OSS = RegionTable(
    "Alibaba OSS",
    {
        code: f"oss-{name}"
        for code, name in enumerate(
            (
                "cn-hangzhou",
                "cn-shanghai",
                "cn-qingdao",
                "cn-beijing",
                "cn-zhangjiakou",
                "cn-huhehaote",
                "cn-wulanchabu",
                "cn-shenzhen",
                "cn-heyuan",
                "cn-guangzhou",
                "cn-chengdu",
                "cn-hongkong",
                "us-west-1",
                "us-east-1",
                "ap-southeast-1",
                "ap-southeast-2",
                "ap-southeast-3",
                "ap-southeast-5",
                "ap-northeast-1",
                "ap-south-1",
                "eu-central-1",
                "eu-west-1",
                "me-east-1",
                "ap-southeast-6",
            )
        )
    },
)

#: The tables by (storage type, vendor): the vendor only for ``custom`` storage.
TABLES: dict[tuple[str, str | None], RegionTable] = {("tos", None): TOS, ("custom", "s3"): S3, ("custom", "oss"): OSS}
#: What the storages without a known table are called in messages.
UNKNOWN: dict[tuple[str, str | None], str] = {
    ("custom", "obs"): "Huawei OBS",
    ("custom", "cos"): "Tencent COS",
    ("custom", "kodo"): "Qiniu Kodo",
    ("veimagex", None): "veImageX",
}


def table_for(storage: str, vendor: str | None = None) -> RegionTable | None:
    return TABLES.get((storage, vendor if storage == "custom" else None))


def region_code(value: Any, storage: str, vendor: str | None = None) -> Any:
    """The API code of a manifest's ``region`` (a name from the table, or an integer); a
    :class:`ValueError` saying why for a name not in the table (or where there is no table)
    and for a code the table marks not supported. Other values are left to the field's type."""
    table = table_for(storage, vendor)
    if isinstance(value, str):
        if table is None:
            what = UNKNOWN.get((storage, vendor if storage == "custom" else None), "this storage")
            raise ValueError(
                f"region names are not known for {what}: give the API's integer code from the vendor's "
                "Region table (see docs/regions.md)"
            )
        code = table.code_of(value)
        if code is None:
            matches = difflib.get_close_matches(value.lower(), list(table.names.values()), n=1, cutoff=0.6)
            hint = f"; did you mean {matches[0]!r}?" if matches else " (see docs/regions.md)"
            raise ValueError(f"{value!r} is not in the {table.storage} region table{hint}")
        value = code
    if table is not None and type(value) is int and value in table.unsupported:
        raise ValueError(
            f"{table.storage} region {value} ({table.names[value]}) is not supported by the API "
            "(the vendor's Region table marks it 暂不支持); choose another region"
        )
    return value


def region_name(storage: str, vendor: str | None, code: Any) -> str | None:
    """The table's name of ``code`` (None where there is no table, or no such code)."""
    table = table_for(storage, vendor)
    return table.names.get(code) if table is not None and type(code) is int else None


def json_schema(storage: str, vendors: tuple[str | None, ...] = (None,)) -> dict[str, Any]:
    """The ``region`` field's schema: the integer code, or a name of these tables."""
    integer = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
    names = [n for v in vendors if (t := table_for(storage, v)) for c, n in t.names.items() if c not in t.unsupported]
    if not names:
        return {**integer, "default": 0}
    return {"anyOf": [integer, {"enum": sorted(set(names))}], "default": 0}
