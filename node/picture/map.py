"""Area boundaries for the picture report's map, read from a GeoJSON file.

The map is a choropleth of the report's areas (postcode-4, CBS wijk or buurt) as
PDOK and CBS publish their boundaries: a GeoJSON ``FeatureCollection`` whose
features carry the area's code in a property (``postcode``/``postcode4``/``pc4``,
``wijkcode``, ``buurtcode`` or CBS's ``statcode``) and a polygon or multipolygon.
Coordinates are either WGS 84 longitude/latitude (RFC 7946, the default) or
Rijksdriehoek (EPSG:28992, named in the file's ``crs`` member as PDOK's older
downloads do); WGS 84 is projected to Rijksdriehoek with pyproj, so the map has
the shape a Dutch reader knows. Shapely reads, repairs and simplifies the
geometry (a buurt file is far more detailed than a page needs).

Sans-IO: ``read_areas`` takes the file's bytes and returns plain SVG path data
scaled to the map's box; the report draws it. Bad input is ``InvalidInput``
naming the offending part of the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

import numpy as np
import shapely
from numpy.typing import NDArray
from pyproj import Transformer
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.geometry.base import BaseGeometry

from samenloop.policies.errors import InvalidInput

__all__ = ["MAX_AREAS", "MAX_BYTES", "AreaMap", "MapArea", "read_areas"]

#: A boundary file larger than this is refused (a region's buurten are a few MB).
MAX_BYTES: Final = 64 * 1024 * 1024
#: At most this many areas on one map.
MAX_AREAS: Final = 5000
#: The map's width in SVG units (pixels at 100 %); its height follows the region's shape.
WIDTH: Final = 560.0
#: ... but never taller than this.
MAX_HEIGHT: Final = 640.0
_MARGIN: Final = 8.0

# Property names, compared case-insensitively, in the order they are tried.
_PC4_KEYS: Final = ("postcode4", "postcode", "pc4")
_CODE_KEYS: Final = ("buurtcode", "wijkcode", "statcode")
_NAME_KEYS: Final = ("buurtnaam", "wijknaam", "statnaam", "naam", "name")
_PC4: Final = re.compile(r"[1-9]\d{3}")
_WIJK: Final = re.compile(r"WK\d{6}")
_BUURT: Final = re.compile(r"BU\d{8}")
_RD_NAMES: Final = ("EPSG:28992", "EPSG::28992")
_WGS84_NAMES: Final = ("CRS84", "EPSG:4326", "EPSG::4326")


@dataclass(frozen=True, slots=True)
class MapArea:
    """One area on the map: its value in the picture's ``area`` dimension (``pc4:4331``),
    its name if the file gives one, its SVG path data and where its label goes."""

    value: str
    name: str
    path: str
    label_x: float
    label_y: float


@dataclass(frozen=True, slots=True)
class AreaMap:
    """The areas of one boundary file, scaled into a box ``width`` wide, ``height`` high."""

    areas: tuple[MapArea, ...]
    width: float
    height: float
    #: The file's own name for itself (a FeatureCollection's ``name``), shown as the source.
    name: str = ""

    def by_value(self) -> Mapping[str, MapArea]:
        return {a.value: a for a in self.areas}


def _fail(message: str, field: str) -> InvalidInput:
    return InvalidInput(message, field=field, reason="picture.areas")


def _crs(doc: Mapping[str, Any]) -> bool:
    """Whether the coordinates are Rijksdriehoek (else WGS 84)."""
    crs = doc.get("crs")
    if crs is None:
        return False
    name = crs.get("properties", {}).get("name") if isinstance(crs, dict) else None
    if not isinstance(name, str):
        raise _fail("a crs member names its system in properties.name", "crs")
    if name.endswith(_RD_NAMES):
        return True
    if name.endswith(_WGS84_NAMES):
        return False
    raise _fail(
        f"coordinates in {name!r}: give WGS 84 (no crs) or Rijksdriehoek (EPSG:28992)", "crs"
    )


def _area_value(properties: Mapping[str, Any], field: str) -> tuple[str, str]:
    """The area's picture value and name from a feature's properties."""
    lower = {str(k).lower(): v for k, v in properties.items()}
    name = next((str(lower[k]) for k in _NAME_KEYS if isinstance(lower.get(k), str)), "")
    for key in _CODE_KEYS:
        code = lower.get(key)
        if isinstance(code, str) and code.strip():
            code = code.strip().upper()
            if _BUURT.fullmatch(code):
                return f"buurt:{code}", name
            if _WIJK.fullmatch(code):
                return f"wijk:{code}", name
            if key != "statcode":
                raise _fail(f"{code!r} is not a CBS {key[:-4]} code", f"{field}.{key}")
    for key in _PC4_KEYS:
        code = lower.get(key)
        if isinstance(code, int) and not isinstance(code, bool):
            code = str(code)
        if isinstance(code, str) and code.strip():
            if not _PC4.fullmatch(code.strip()):
                raise _fail(f"{code!r} is not a postcode-4 (1000..9999)", f"{field}.{key}")
            return f"pc4:{code.strip()}", name
    raise _fail(
        "no area code: give postcode4 (or postcode), wijkcode, buurtcode or statcode", field
    )


def _polygons(raw: object, field: str) -> BaseGeometry:
    if not isinstance(raw, dict):
        raise _fail("must be a GeoJSON geometry", field)
    try:
        geometry = shape(raw)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as error:
        raise _fail(f"not a valid GeoJSON geometry ({error})", field) from None
    if not isinstance(geometry, Polygon | MultiPolygon) or geometry.is_empty:
        raise _fail("must be a Polygon or MultiPolygon", field)
    if not geometry.is_valid:
        geometry = shapely.make_valid(geometry)  # self-touching rings, as exports have
    return geometry


def read_areas(data: bytes) -> AreaMap:
    """The areas of a GeoJSON ``FeatureCollection``, projected, simplified and scaled."""
    if len(data) > MAX_BYTES:
        raise _fail(f"larger than {MAX_BYTES // (1024 * 1024)} MB", "areas")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise _fail(f"not JSON ({error})", "areas") from None
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
        raise _fail("must be a GeoJSON FeatureCollection", "type")
    rd = _crs(doc)
    features = doc.get("features")
    if not isinstance(features, list) or not features:
        raise _fail("must list at least one feature", "features")
    if len(features) > MAX_AREAS:
        raise _fail(f"at most {MAX_AREAS} areas", "features")
    values: list[tuple[str, str]] = []
    shapes: list[BaseGeometry] = []
    seen: set[str] = set()
    for i, feature in enumerate(features):
        field = f"features[{i}]"
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise _fail("must be a GeoJSON Feature", field)
        properties = feature.get("properties")
        if not isinstance(properties, dict):
            raise _fail("must be an object", f"{field}.properties")
        value, name = _area_value(properties, f"{field}.properties")
        if value in seen:
            raise _fail(f"{value} appears twice", f"{field}.properties")
        seen.add(value)
        values.append((value, name))
        shapes.append(_polygons(feature.get("geometry"), f"{field}.geometry"))
    geometries = np.array(shapes, dtype=object)
    if not rd:
        geometries = shapely.transform(geometries, _to_rd())
    title = doc.get("name")
    return replace(_fit(values, geometries), name=title[:200] if isinstance(title, str) else "")


def _to_rd() -> Callable[[NDArray[np.float64]], NDArray[np.float64]]:
    transformer = Transformer.from_crs("EPSG:4326", "EPSG:28992", always_xy=True)

    def project(xy: NDArray[np.float64]) -> NDArray[np.float64]:
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return project


def _fit(values: list[tuple[str, str]], geometries: NDArray[Any]) -> AreaMap:
    """Scale into the map's box (north up) and simplify to what the box can show."""
    minx, miny, maxx, maxy = shapely.total_bounds(geometries)
    span_x, span_y = max(maxx - minx, 1e-9), max(maxy - miny, 1e-9)
    scale = min((WIDTH - 2 * _MARGIN) / span_x, (MAX_HEIGHT - 2 * _MARGIN) / span_y)
    width = span_x * scale + 2 * _MARGIN
    height = span_y * scale + 2 * _MARGIN
    simplified = shapely.simplify(geometries, 0.6 / scale, preserve_topology=True)
    labels = shapely.point_on_surface(geometries)

    def to_box(xy: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.column_stack(
            [(xy[:, 0] - minx) * scale + _MARGIN, (maxy - xy[:, 1]) * scale + _MARGIN]
        )

    boxed = shapely.transform(simplified, to_box)
    points = shapely.get_coordinates(shapely.transform(labels, to_box))
    areas = tuple(
        MapArea(value, name, _path(geometry), float(point[0]), float(point[1]))
        for (value, name), geometry, point in zip(values, boxed, points, strict=True)
    )
    return AreaMap(areas, round(width, 1), round(height, 1))


def _path(geometry: BaseGeometry) -> str:
    """SVG path data: every ring of every polygon, closed (drawn with fill-rule evenodd)."""
    parts: list[str] = []
    polygons = getattr(geometry, "geoms", [geometry])
    for polygon in polygons:
        if not isinstance(polygon, Polygon):
            continue  # make_valid may leave a stray line; it has no area to fill
        for ring in (polygon.exterior, *polygon.interiors):
            coords = shapely.get_coordinates(ring)[:-1]
            if len(coords) < 3:
                continue
            points = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            parts.append(f"M{points}Z")
    return "".join(parts)
