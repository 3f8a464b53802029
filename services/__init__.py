"""The two services (gateway, worker), the shipped workflows and the `tidings` CLI.

Installed as `tidings.services`. Imported under another name (`python -m services.gateway` from
the repository root, say) every module would load twice, once per name, with two copies of each
class and registry: refuse that at once instead.
"""

if __name__ != "tidings.services":
    raise ImportError(
        f"this package is imported as {__name__!r}: import it as 'tidings.services' "
        "(python -m tidings.services.gateway, or the `tidings` command)"
    )
