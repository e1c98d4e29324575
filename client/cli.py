"""`fedsilo site ...`: what a partner site's operator runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from common.console import (
    ConfigOption,
    SetOption,
    check_silo_and_print,
    console,
    fail,
    load,
    setup_logging,
)

site_app = typer.Typer(help="A partner site: keys, silo check, joining the federation.",
                       no_args_is_help=True)
HomeArg = Annotated[Path, typer.Argument(help="The site home folder.")]
SiteOption = Annotated[str, typer.Option("--site", help="This site's id (e.g. 'de').")]


@site_app.command("init")
def site_init(
    root: HomeArg,
    site: SiteOption,
    kem: Annotated[str, typer.Option(help="x25519 or mlkem768-x25519.")] = "x25519",
) -> None:
    """Create the site's identity and SuperNode key; prints what to send the coordinator."""
    setup_logging(False)
    from client.site import init_site
    from common.keys import KeyFileError

    try:
        files = init_site(root, site, kem)
    except FileExistsError:
        fail(f"{root} already holds keys for site {site}; to rotate them use a new home "
             "folder (and ask the coordinator to revoke the old keys)")
    except (KeyFileError, ValueError) as exc:
        fail(str(exc))
    console.print(f"send the coordinator: {files['identity']} and {files['node_key']}")
    console.print("private keys stay in " + str(Path(root) / "keys") + " (mode 0600)")


@site_app.command("check")
def site_check(
    silo: Annotated[Path, typer.Argument(help="The site's silo directory.")],
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Validate the silo against the federation's labels; prints counts, never raw text."""
    check_silo_and_print(silo, config, set_)


@site_app.command("join")
def site_join(
    root: HomeArg,
    site: SiteOption,
    superlink: Annotated[str, typer.Option(help="The coordinator's SuperLink, host:port.")],
    ca: Annotated[Path, typer.Option(help="The federation's ca.pem, from the coordinator.")],
    silo: Annotated[Path | None, typer.Option(help="This site's silo directory.")] = None,
    coordinator_key: Annotated[Path | None, typer.Option(
        help="The coordinator's coordinator.pub.json (once; kept in the site home).")] = None,
    port: Annotated[int, typer.Option(help="The SuperNode's local port (loopback).")] = 39511,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Join the federation: load the model once, start the SuperNode, serve rounds until
    stopped (Ctrl-C). Exits non-zero when the SuperLink refuses the site."""
    setup_logging(False)
    cfg = load(config, set_)
    from client.site import SiteSetupError, join, site_config
    from common.keys import KeyFileError
    from server.pki import CertificateError, load_certificate

    try:
        load_certificate(ca)
        cfg = site_config(cfg, site, root, silo)
        code = join(cfg, site, root, superlink, ca, coordinator_key, port)
    except (SiteSetupError, CertificateError, KeyFileError, FileNotFoundError,
            ValueError) as exc:
        fail(str(exc), code=1)
    raise typer.Exit(code)
