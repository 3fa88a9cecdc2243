"""An import-linter contract type: no cycle of direct imports between the given packages.

The layers contract already forbids upward imports between the layers it names; this one says
the rule without a layer order, for every package listed, and names the cycle it finds
(``.importlinter``, docs/architecture.md).
"""

from __future__ import annotations

from grimp import ImportGraph
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


class AcyclicPackagesContract(Contract):
    type_name = "acyclic_packages"

    packages = fields.ListField(subfield=fields.StringField())

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        names = [str(name) for name in self.packages]  # a list once Contract is built
        edges = {
            name: [
                other
                for other in names
                if other != name
                and graph.direct_import_exists(importer=name, imported=other, as_packages=True)
            ]
            for name in names
        }
        cycle = _first_cycle(edges)
        return ContractCheck(kept=cycle is None, warnings=None, metadata={"cycle": cycle})

    def render_broken_contract(self, check: ContractCheck) -> None:
        output.print_error(" -> ".join(check.metadata["cycle"]))
        output.new_line()


def _first_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    """A cycle in the package graph (first package repeated at the end), or None."""
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        for other in edges[name]:
            found = visit(other, [*path, name])
            if found:
                return found
        done.add(name)
        return None

    for start in edges:
        found = visit(start, [])
        if found:
            return found
    return None
