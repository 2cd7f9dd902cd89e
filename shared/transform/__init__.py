"""The transformation engine: JSONata expressions, field maps, lookups, link helpers.

Public surface::

    build_transform(name, spec) -> Transform        # compile once per document
    parse_target("data[0].name") -> ("data", 0, "name")  # a map target
    Transform.apply(record, TransformContext) -> dict
    compile_template(value) -> Template             # parameter values with {expr}
    TransformContext(lookups, links, variables)
    LookupTable, LinkLookup, PreloadedLinks, LinksNotLoaded
"""

from shared.transform.context import (
    LinkLookup,
    LinksNotLoaded,
    LookupTable,
    PreloadedLinks,
    TransformContext,
)
from shared.transform.expressions import (
    UNDEFINED,
    Expression,
    ExpressionRuntimeError,
    ExpressionSyntaxError,
)
from shared.transform.targets import TargetError, parse_target, shape_problems, target_name
from shared.transform.transform import (
    Template,
    TemplateSyntaxError,
    Transform,
    build_transform,
    compile_expression,
    compile_template,
)

__all__ = [
    "UNDEFINED",
    "Expression",
    "ExpressionRuntimeError",
    "ExpressionSyntaxError",
    "LinkLookup",
    "LinksNotLoaded",
    "LookupTable",
    "PreloadedLinks",
    "TargetError",
    "Template",
    "TemplateSyntaxError",
    "Transform",
    "TransformContext",
    "build_transform",
    "compile_expression",
    "compile_template",
    "parse_target",
    "shape_problems",
    "target_name",
]
