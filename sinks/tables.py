"""Which table a row goes to: campaign totals, or dimension slices (`pulse.dimensions`).

The slice tables have the columns of the totals tables plus `dimension_set` and
`dimensions` (jsonb), which join their keys. Each statement of the sink is written once,
as a template with the placeholders below, and composed for either kind of table with
`psycopg.sql` (identifiers, never string formatting):

- `{metrics}`, `{rollups}`: the window and rollup tables;
- `{cols}`: `, dimension_set, dimensions` for slices, nothing for totals;
- `{m_cols}`, `{r_cols}`, `{s_cols}`: the same columns of the aliases `m`, `r` and `s`;
- `{staged}`: the condition on the staging table `s` that picks this kind's rows;
- `{arrays}`: two more `unnest()` parameters (`text[]`, `jsonb[]`) for slices;
- `{m_join}`, `{r_join}`: the extra key conditions between `m` or `r` and `k`.
"""

from dataclasses import dataclass
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from pulse.dimensions import is_series, series_of_row, split_series


@dataclass(frozen=True, slots=True)
class Tables:
    metrics: str
    rollups: str
    sliced: bool

    def compose(self, template: str) -> sql.Composed:
        def cols(alias: str) -> sql.Composable:
            if not self.sliced:
                return sql.SQL("")
            prefix = f"{alias}." if alias else ""
            return sql.SQL(f", {prefix}dimension_set, {prefix}dimensions")

        def join(alias: str) -> sql.Composable:
            if not self.sliced:
                return sql.SQL("")
            return sql.SQL(
                f" AND {alias}.dimension_set = k.dimension_set"
                f" AND {alias}.dimensions = k.dimensions"
            )

        arrays = sql.SQL(", %b::text[], %b::jsonb[]" if self.sliced else "")
        return sql.SQL(template).format(
            metrics=sql.Identifier(self.metrics),
            rollups=sql.Identifier(self.rollups),
            cols=cols(""),
            m_cols=cols("m"),
            r_cols=cols("r"),
            s_cols=cols("s"),
            staged=sql.SQL(f"s.dimension_set IS {'NOT ' if self.sliced else ''}NULL"),
            arrays=arrays,
            m_join=join("m"),
            r_join=join("r"),
        )


TOTALS = Tables("event_metrics", "event_sketch_rollups", sliced=False)
SLICES = Tables("event_metrics_by_dimensions", "event_sketch_rollups_by_dimensions", sliced=True)


def tables_of(event_type: str) -> Tables:
    return SLICES if is_series(event_type) else TOTALS


def key_columns(event_types: list[str]) -> tuple[list[str], list[Any], list[Any]]:
    """Per row of a slice table: (event types, dimension sets, `Jsonb` dimensions)."""
    bases: list[str] = []
    names: list[Any] = []
    dims: list[Any] = []
    for event_type in event_types:
        base, name, values = split_series(event_type)
        bases.append(base)
        names.append(name)
        dims.append(Jsonb(values))
    return bases, names, dims


def stored_series(
    event_type: str, name: str | None = None, dims: dict[str, str] | None = None
) -> str:
    """The dataflow's event type (a series for slices) of a row read back."""
    return event_type if name is None or dims is None else series_of_row(event_type, name, dims)
