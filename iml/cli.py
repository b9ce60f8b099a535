"""The `iml` command line: `iml demo` runs the pipeline end to end; `iml verify` traces a leaked model."""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import click
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from functions.chain import STEPS
from iml.device import SUITES

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EXIT_ACCUSED, EXIT_NOBODY, EXIT_ERROR = 0, 1, 2


class _Console(Console):
    """A closed pipe (`iml verify ... | head -0`) ends a command with exit 2: its output was not delivered, and
    `iml verify`'s exit 0 and 1 are verdicts, never left to a library's choice."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        _silence(sys.stdout)
        _silence(sys.stderr)
        raise SystemExit(EXIT_ERROR)


def _silence(stream) -> None:
    """Point a closed pipe's descriptor at /dev/null, so that nothing written later (a flush at exit) fails."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)


err = _Console(stderr=True, soft_wrap=True)  # messages stay on one line for grep and log readers


@click.group()
@click.version_option(package_name="iml-pipeline")
def main() -> None:
    """Individual ML models: generated, fingerprinted, sealed to a device, expired; and traced when leaked."""


RECIPE_OPTION = click.option("--recipe", default=None, metavar="NAME",
                             help="The recipe (`iml recipes` lists them; default: IML_RECIPE, else digits-mlp).")


@main.command()
@click.option("--users", type=click.IntRange(1, 100), default=3, show_default=True, help="Simulated users.")
@click.option("--user-data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A folder of DIR/<user_id>.npz files (x, y, optional x_eval, y_eval): one user each, instead "
                   "of simulated users.")
@click.option("--models-per-user", type=click.IntRange(1, 10), default=1, show_default=True,
              help="Models issued to each user (one signup each): all carry the user's one fingerprint, so "
                   "comparing them reveals nothing of it.")
@RECIPE_OPTION
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-run"),
              show_default=True, help="Folder for buckets, keys, ledger, devices (reused: the base model is kept).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout instead of tables.")
def demo(users: int, user_data: Path | None, models_per_user: int, recipe: str | None, workdir: Path,
         as_json: bool) -> None:
    """Run the whole pipeline for N simulated users (or the users of --user-data) on embedded defaults: no cloud,
    no network. The recipe's base model is published first if the workdir has none."""
    from functions.recipes import RecipeError, RecipeNotInstalled
    from iml.demo import DemoError
    from infra.errors import PermanentError
    from iml.demo import Progress as DemoProgress
    from iml.demo import run_demo
    from infra import logs

    workdir = workdir.resolve()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    log_file = open(workdir / "logs" / "pipeline.jsonl", "a")
    logs.configure(log_file)
    bars = Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=False)
    tasks: dict[str, int] = {}

    def advance(stage: str, seconds: float) -> None:
        bars.start_task(tasks[stage])  # a stage's clock starts with its first piece of work
        bars.advance(tasks[stage])

    hooks = DemoProgress(
        on_stage=lambda stage, total: tasks.setdefault(stage, bars.add_task(stage, total=total, start=False)),
        on_advance=advance,
    )
    try:
        with log_file, bars, _quiet_tensorflow(_tensorflow_log(workdir)), _stdout_to_stderr(as_json):
            report = run_demo(users, workdir, hooks, recipe=recipe or os.environ.get("IML_RECIPE"),
                              user_data=user_data, models_per_user=models_per_user)
    except (DemoError, RecipeNotInstalled, RecipeError, PermanentError) as error:
        _fail(str(error))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print_demo(report)


@main.command("recipes")
def recipes_command() -> None:
    """List the installed recipes (entry point group iml.recipes), and what each makes."""
    from functions import recipes

    table = Table(box=box.SIMPLE_HEAD)
    for column in ("recipe", "base version", "input", "classes", "fingerprint layers", "from", "summary"):
        table.add_column(column)
    for name, where in recipes.installed().items():
        try:
            recipe = recipes.load(name)
        except Exception as error:  # a model owner's package that fails to import is listed, not fatal
            table.add_row(_plain(name), "-", "-", "-", "-", _plain(where), f"cannot be loaded: {_plain(str(error))}")
            continue
        table.add_row(name, recipe.base_version, "x".join(map(str, recipe.input_shape)), str(recipe.classes),
                      ", ".join(recipe.fingerprint_layers), where, recipe.summary)
    _wide_console().print(table)


@main.group("base")
def base_group() -> None:
    """The recipes' base models: published once, before the first signup; generate never trains one."""


@base_group.command("publish")
@RECIPE_OPTION
@click.option("--model", "model_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A trained .keras file to publish; without it, the recipe's base model is trained here.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Publish into a local pipeline's models folder (DIR/buckets/models).")
@click.option("--bucket", default=None, metavar="gs://BUCKET", help="Publish into a Cloud Storage models bucket.")
def base_publish(recipe: str | None, model_file: Path | None, workdir: Path | None, bucket: str | None) -> None:
    """Publish the recipe's base model version with what the watermark step and the verifier need (weights,
    layer structure, carrier positions, probe inputs). Publishing a version again is a no-op; another model
    under a published version is refused."""
    import tempfile
    from datetime import datetime, timezone

    from functions.recipes import RecipeError, RecipeNotInstalled, load
    from infra.errors import PermanentError

    if (workdir is None) == (bucket is None):
        _fail("give either --workdir DIR or --bucket gs://BUCKET")
    if bucket is not None and not (bucket.startswith("gs://") and bucket[5:].strip("/")):
        _fail("--bucket takes gs://BUCKET")
    name = recipe or os.environ.get("IML_RECIPE", "digits-mlp")
    log_dir = workdir.resolve() if workdir else Path(tempfile.gettempdir()) / "iml"
    try:
        chosen = load(name)
        store = _models_store(workdir, bucket)
        with _quiet_tensorflow(_tensorflow_log(log_dir)), err.status(f"publishing base {chosen.base_version}") as status:
            from functions import base_model

            published, written = base_model.publish(
                chosen, store, datetime.now(timezone.utc).isoformat(),
                model_file.read_bytes() if model_file else None,
                on_step=lambda step: status.update(f"{chosen.base_version}: {STEP_WORDS[step]}"))
    except (RecipeNotInstalled, RecipeError, PermanentError) as error:
        _fail(str(error))
    where = bucket or str(workdir.resolve() / "buckets" / "models")
    carriers = ", ".join(layer.name for layer in published.carriers)
    click.echo(f"base {published.version} of recipe {published.recipe} "
               f"{'published' if written else 'was published already'} in {where}: {len(published.layers)} weight "
               f"layers, fingerprint on {carriers} ({published.codeword_length} positions)")


STEP_WORDS = {"train": "training the base model", "check": "checking the model against the recipe",
              "upload": "uploading"}


def _models_store(workdir: Path | None, bucket: str | None):
    if workdir is not None:
        from infra.local_storage import LocalBlobStore

        return LocalBlobStore(workdir.resolve() / "buckets" / "models")
    from google.cloud import storage

    from infra.gcs_storage import GcsBlobStore

    return GcsBlobStore(storage.Client(), bucket[len("gs://"):].strip("/"))


def _tensorflow_log(folder: Path) -> Path:
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    return folder / "logs" / "tensorflow.log"


@main.command("verify")
@click.argument("model_file", type=click.Path(exists=True, path_type=Path))
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="The workdir of a local pipeline that issued the models (its ledger, keys and base model).")
@click.option("--ledger", "ledger_uri", metavar="URI",
              help="The ledger instead: gs://BUCKET or a folder; the base models and the keys come from the "
                   "IML_* environment variables, as the functions read them.")
@click.option("--alpha", type=click.FloatRange(1e-300, 0.5), default=1e-9, show_default=True,
              help="Bound on the probability of accusing any innocent user.")
@click.option("--max-accused", type=click.IntRange(1, 10_000), default=3, show_default=True,
              help="A verdict accusing more users than this is marked 'needs review: unusually many accused'.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the evidence report here (HTML), with its KMS-signed JSON twin beside it (.json).")
def verify_command(model_file: Path, workdir: Path | None, ledger_uri: str | None, alpha: float, max_accused: int,
                   as_json: bool, report_path: Path | None) -> None:
    """Name the user a leaked MODEL_FILE (.tflite in any quantization, .keras, or a SavedModel folder) was issued
    to. Exit 0: someone accused; 1: nobody; 2: error (no verdict, whatever the error)."""
    written: list[Path] = []
    try:
        verdict = _verify(model_file, workdir, ledger_uri, alpha, max_accused, as_json, report_path, written)
    except BaseException as stop:  # every way out but a verdict is exit 2 with a message, and leaves no report
        for path in written:
            path.unlink(missing_ok=True)
        if isinstance(stop, SystemExit) and stop.code == EXIT_ERROR:
            raise
        _fail(_why_no_verdict(stop))
    sys.exit(EXIT_ACCUSED if verdict.accused else EXIT_NOBODY)


def _why_no_verdict(stop: BaseException) -> str:
    from infra.errors import PermanentError, TransientError
    from watermark.errors import VerificationError

    if isinstance(stop, (VerificationError, PermanentError, TransientError)):
        return str(stop)
    if isinstance(stop, KeyboardInterrupt):
        return "interrupted; no verdict was given"
    if isinstance(stop, BrokenPipeError) or isinstance(stop, SystemExit):
        _silence(sys.stdout)
        return "the output could not be written (a closed pipe?); no verdict was given"
    return f"internal error ({type(stop).__name__}); no verdict was given"


def _verify(model_file: Path, workdir: Path | None, ledger_uri: str | None, alpha: float, max_accused: int,
            as_json: bool, report_path: Path | None, written: list[Path]):
    """The verdict, its report (paths appended to `written` as they are made), then its printout."""
    from watermark.report import report_paths
    from watermark.sandbox import shield_this_process
    from watermark.verify import verify_file

    shield_this_process()  # it holds the ledger's and the fingerprint key's access while a stranger's file is read
    if report_path:
        report_paths(report_path)  # refused before any work when it would overwrite a file
    from infra.bootstrap import verifier_ports
    from infra.settings import SettingsError

    try:
        ports = verifier_ports(workdir, ledger_uri)
    except SettingsError as error:
        _fail(str(error))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err,
                  transient=True, disable=as_json) as bars:
        task = bars.add_task("reading the file apart", total=None)
        verdict = verify_file(model_file, ports.ledger, ports.kms, ports.models, alpha=alpha,
                              max_accused=max_accused, progress=lambda done, total: bars.update(
                                  task, description="ranking", completed=done, total=total))
    if report_path:
        from watermark.report import write_report

        source = f"--ledger {ledger_uri}" if ledger_uri else f"--workdir {workdir}"
        command = (f"iml verify {model_file} {source} --alpha {alpha} --max-accused {max_accused} "
                   f"--report {report_path}")
        written += write_report(verdict, report_path, ports.kms, file_name=model_file.name, command=command,
                                parameters={"alpha": alpha, "max_accused": max_accused,
                                            "ledger": ledger_uri or str(workdir)})
        err.print(f"evidence report: {written[0]} (signed twin: {written[1]})", markup=False)
    if as_json:
        click.echo(verdict.to_json())
        sys.stdout.flush()  # a closed pipe shows here, while the report can still be taken back
    else:
        _print_verdict(verdict, model_file)
    return verdict


@main.group()
def device() -> None:
    """The device reference client: make a device key pair, open a sealed model (docs/client-guide.md)."""


@device.command("keygen")
@click.option("--out", "folder", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for device.key (mode 0600) and device.pub.")
@click.option("--suite", type=click.Choice(SUITES), default="p256", show_default=True,
              help="P-256 (CryptoKit, Tink, Secure Enclave), X25519, or X-Wing (post-quantum hybrid).")
def device_keygen(folder: Path, suite: str) -> None:
    """Make a device key pair; device.pub holds the base64 public key a signup sends."""
    from iml.device import generate_key, write_key_files

    write_key_files(folder, generate_key(suite))
    click.echo(f"wrote {folder / 'device.key'} (private, 0600) and {folder / 'device.pub'}")


@device.command("open")
@click.argument("sealed", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", "key_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The device's private key file (device.key).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where the model goes; it appears only once the whole envelope verified.")
@click.option("--user-id", help="Refuse an envelope issued to another user.")
@click.option("--model-id", help="Refuse an envelope holding another model.")
def device_open(sealed: Path, key_file: Path, out: Path, user_id: str | None, model_id: str | None) -> None:
    """Open a sealed model with the device's private key. Exit 0: opened; 2: refused (the reason is printed)."""
    from infra.envelope import EnvelopeError, open_sealed
    from iml.device import load_private_key

    try:
        header = open_sealed(sealed, out, load_private_key(key_file), expected_user_id=user_id,
                             expected_model_id=model_id)
    except EnvelopeError as error:
        _fail(f"{type(error).__name__}: {error}")
    click.echo(f"opened {header.model_id} for {header.user_id}: {header.plaintext_size} bytes, "
               f"sha256 {header.plaintext_sha256} -> {out}")


@main.command("seal")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--device-pub", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The device's public key file: base64, as in device.pub.")
@click.option("--user-id", required=True)
@click.option("--model-id", required=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--chunk-kib", type=click.IntRange(4, 16384), default=256, show_default=True,
              help="Chunk size in KiB, a power of two.")
def seal_command(model: Path, device_pub: Path, user_id: str, model_id: str, out: Path, chunk_kib: int) -> None:
    """Seal MODEL for one device (operators; the pipeline seals on its own). Exit 0: sealed; 2: refused."""
    import base64
    import binascii
    from datetime import datetime, timezone

    from infra.envelope import EnvelopeError, load_device_public_key, seal

    try:
        raw = base64.b64decode(device_pub.read_text().strip(), validate=True)
        header = seal(model, out, load_device_public_key(raw), user_id=user_id, model_id=model_id,
                      created_at=datetime.now(timezone.utc), chunk_size=chunk_kib << 10)
    except (binascii.Error, UnicodeDecodeError):
        _fail(f"{device_pub} is not a base64 public key (device.pub)")
    except (EnvelopeError, ValueError) as error:
        _fail(str(error))
    click.echo(f"sealed {header.plaintext_size} bytes for {user_id} ({header.chunk_count} chunks) -> {out}")


@main.group("dev-stack")
def dev_stack() -> None:
    """A local cloud: the Pub/Sub emulator, fake-gcs-server and one functions-framework server per step, wired as
    deployed."""


STACK_DIR = click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path),
                         default=Path(".iml-dev-stack"), show_default=True,
                         help="Folder of the stack: its state, logs, objects and local keys.")


@dev_stack.command("up")
@STACK_DIR
@click.option("--project", default="iml-dev", show_default=True, help="Project id the emulators use.")
@click.option("--base-models", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Upload the base model from this folder (a models bucket's, such as DEMO_WORKDIR/buckets/models) "
                   "instead of training it (about a minute).")
@RECIPE_OPTION
def dev_stack_up(folder: Path, project: str, base_models: Path | None, recipe: str | None) -> None:
    """Start the emulators and the five functions; create topics, push subscriptions and buckets; publish the
    recipe's base model."""
    from functions.recipes import RecipeError, RecipeNotInstalled
    from iml.devstack import DevStackError, instructions, up
    from infra.errors import PermanentError

    try:
        stack = up(folder, project, env_overrides={"IML_RECIPE": recipe} if recipe else None,
                   say=lambda line: err.print(f"[dim]{line}[/]"), base_models=base_models)
    except (DevStackError, RecipeNotInstalled, RecipeError, PermanentError) as error:
        _fail(str(error))
    click.echo(instructions(stack))


@dev_stack.command("down")
@STACK_DIR
def dev_stack_down(folder: Path) -> None:
    """Stop every process `up` started, by process id. Objects and logs stay in the folder."""
    from iml.devstack import DevStackError, down

    try:
        stopped = down(folder, say=click.echo)
    except DevStackError as error:
        _fail(str(error))
    click.echo(f"dev stack in {folder.resolve()} is down ({len(stopped)} processes stopped)")


@dev_stack.command("restart")
@click.argument("name", type=click.Choice(["storage", *STEPS]))
@click.option("--down-for", type=click.FloatRange(0, 600), default=0.0, show_default=True,
              help="Seconds to keep it stopped, as an outage would.")
@STACK_DIR
def dev_stack_restart(name: str, down_for: float, folder: Path) -> None:
    """Kill one process of the stack (a step's function server, or the storage stand-in) and start it again on
    the same port, with the same environment and log: a crash, or an outage of DOWN_FOR seconds."""
    from iml.devstack import DevStackError, restart

    try:
        restart(folder, name, down_for, say=click.echo)
    except DevStackError as error:
        _fail(str(error))


@dev_stack.command("signup")
@click.argument("user_id")
@click.option("--device-key", "device_pub", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="The device's public key file (device.pub from `iml device keygen`).")
@click.option("--request-id", default=None, help="The request's id (default: a fresh one).")
@click.option("--data", "data_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The user's data (.npz of x, y, optional x_eval, y_eval: docs/recipes.md), uploaded to the user-data "
                   "bucket under <user_id>/; the signup's data_ref names it.")
@STACK_DIR
def dev_stack_signup(user_id: str, device_pub: Path, request_id: str | None, data_file: Path | None,
                     folder: Path) -> None:
    """Publish a signup for USER_ID to the stack's signup topic, with the user's data when --data is given."""
    import hashlib
    import uuid

    from functions.events import Signup
    from iml.devstack import DevStackError, Stack, publish, upload_user_data
    from infra.errors import InvalidEvent

    try:
        stack = Stack.load(folder.resolve())
        request_id = request_id or uuid.uuid4().hex
        event = {"schema_version": 1, "request_id": request_id, "user_id": user_id,
                 "device_public_key": device_pub.read_text().strip()}
        signup = Signup.parse(event)  # the ids are checked before anything is uploaded under them
        if data_file is not None:
            name = f"{hashlib.sha256(request_id.encode()).hexdigest()[:16]}.npz"  # request ids may hold ':'
            data_ref = upload_user_data(stack, user_id, name, data_file.read_bytes())
            signup = Signup.parse({**event, "data_ref": data_ref})
        publish(stack, stack.settings().topics.signup, signup.to_dict())
    except (DevStackError, InvalidEvent) as error:
        _fail(str(error))
    click.echo(f"signup {signup.request_id} of {user_id} published; model {signup.model_id} is on its way")


@dev_stack.command("messages")
@click.option("--wait", type=click.FloatRange(0.5, 600), default=5.0, show_default=True,
              help="Seconds to wait for messages.")
@STACK_DIR
def dev_stack_messages(wait: float, folder: Path) -> None:
    """Print (and acknowledge) the ready and dead-letter messages waiting, one JSON object per line."""
    from iml.devstack import WATCHED, DevStackError, Stack, pull

    try:
        stack = Stack.load(folder.resolve())
        topics = stack.settings().topics
        for watched in WATCHED:
            for message in pull(stack, getattr(topics, watched), timeout=wait):
                click.echo(json.dumps({"topic": getattr(topics, watched), **message}))
    except DevStackError as error:
        _fail(str(error))


@main.command("package")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("dist"), show_default=True,
              help="Folder for the archives.")
@click.option("--lock", is_flag=True, help="First rewrite deploy/requirements-*.txt from the installed packages.")
def package_command(out: Path, lock: bool) -> None:
    """Build the function source archives Terraform uploads: iml-functions-tensorflow.zip (generate, watermark)
    and iml-functions-light.zip (encrypt, publish, expire), byte-for-byte reproducible."""
    from iml.package import PackagingError, build
    from iml.package import lock as write_locks

    try:
        if lock:
            for path in write_locks():
                click.echo(f"pinned {path}")
        for name, (path, sha256) in build(out).items():
            click.echo(f"{path}  sha256 {sha256}  ({path.stat().st_size} bytes)")
    except PackagingError as error:
        _fail(str(error))


def _fail(message: str) -> None:
    """Exit 2 with the message. It may quote a parser that quoted a stranger's file: no markup or control
    characters of it reach the terminal."""
    err.print(f"[bold red]error:[/] {_plain(message)}")
    sys.exit(EXIT_ERROR)


def _plain(text: str) -> str:
    """Text that may come from a stranger (a parser quoting a file, a ledger object's name), shown as it is:
    no markup, no control characters (no forged lines, no terminal escapes)."""
    from rich.markup import escape

    return escape("".join(c if c.isprintable() else "?" for c in text))


@contextlib.contextmanager
def _quiet_tensorflow(log_path: Path):
    """TensorFlow's C++ start-up lines (absl, oneDNN, XNNPACK) and Python warnings go to `log_path`, not to the
    terminal: descriptor 2, where C++ writes, points at the log while the command runs; Python's sys.stderr
    (our progress bars and errors) keeps the terminal."""
    import warnings

    sys.stderr.flush()
    terminal = os.dup(2)
    log = open(log_path, "a")
    os.dup2(log.fileno(), 2)
    saved = sys.stderr
    sys.stderr = os.fdopen(os.dup(terminal), "w", buffering=1, encoding=saved.encoding, errors="backslashreplace")
    showwarning = warnings.showwarning
    warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: showwarning(
        message, category, filename, lineno, log, line)
    try:
        yield
    finally:
        warnings.showwarning = showwarning
        replacement, sys.stderr = sys.stderr, saved
        replacement.flush()
        os.dup2(terminal, 2)
        os.close(terminal)
        replacement.close()
        log.close()


@contextlib.contextmanager
def _stdout_to_stderr(enabled: bool):
    """Keep stdout for the JSON report alone: libraries that print (TensorFlow does) go to stderr."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _print_demo(report: dict) -> None:
    from watermark.detect import format_p

    out = _wide_console()
    table = Table(title=f"Individual models of recipe {report['recipe']} (base {report['base_model_version']}), "
                        f"{report['models_per_user']} per user: accuracy on each user's held-out data")
    table.add_column("user", no_wrap=True)
    table.add_column("model", no_wrap=True, min_width=34)  # whole: people copy model ids
    for column in ("base model", "unmarked", "marked", "on device"):
        table.add_column(column, justify="right")
    for row in report["users"]:
        table.add_row(row["user_id"], row["model_id"] or "-", _pct(row["accuracy_base_model"]),
                      _pct(row["accuracy_unwatermarked"]), _pct(row["accuracy_watermarked"]),
                      _pct(row["accuracy_on_device"]))
    out.print(table)
    leak, never = report["leak"], report["never_issued"]
    if leak:
        out.print(f"Leaked model of [bold]{leak['leaked_user']}[/]: accused {leak['accused'] or 'nobody'} "
                  f"(z = {leak['score']:.1f}, p = {format_p(leak['log10_p_value'])}, threshold "
                  f"{format_p(leak['log10_p_threshold'])}); the accused identity's issued models: "
                  f"{len(leak['accused_models'])}")
    out.print(f"Model never issued: accused {never['accused'] or 'nobody'} "
              f"(best p = {format_p(never['best_log10_p_value'])})")
    expiry = report["expiry"]
    out.print(f"Expiry: {expiry['delivered_before']} delivered, {expiry['remaining']} left after the TTL, "
              f"{expiry['ledger_expired_records']} deletions in the ledger")
    for dead in report["dead_letters"]:
        out.print(f"[yellow]dead letter[/] from {dead['step']}: {dead['reason']}")
    out.print("Seconds per step: " + ", ".join(f"{k} {v:.1f}" for k, v in report["timings"].items()))
    out.print(f"Everything is under {report['workdir']}; try: iml verify {leak['file'] if leak else 'FILE'} "
              f"--workdir {report['workdir']}")


def _print_verdict(verdict, model_file: Path) -> None:
    from watermark.detect import format_p, z_threshold

    out = _wide_console()
    table = Table(title=f"{_plain(model_file.name)}: best of {verdict.identities_scored} scored fingerprint identities "
                        f"(a user and a base model version; {verdict.records_read} issued models)",
                  box=box.SIMPLE_HEAD)
    table.add_column("user", no_wrap=True)
    table.add_column("issued models", no_wrap=True, min_width=34)  # whole: people copy model ids
    for column in ("score z", "log10 p", "p-value", ""):
        table.add_column(column, justify="right")
    for c in verdict.candidates:
        table.add_row(_plain(c.user_id), _plain("\n".join(c.model_ids)), f"{c.score:.2f}", f"{c.log10_p_value:.2f}",
                      format_p(c.log10_p_value), "accused" if c.accused else "")
    out.print(table)
    for line in verdict.excluded_records:  # read from the ledger before any signature was checked
        err.print(f"[yellow]excluded ledger record[/] {_plain(line)}")
    threshold = (f"p <= {format_p(verdict.log10_p_threshold)}, log10 p <= {verdict.log10_p_threshold:.2f}, "
                 f"z >= {z_threshold(verdict.log10_p_threshold):.2f}")
    if verdict.accused:
        out.print(f"[bold]Accused:[/] {_plain(', '.join(verdict.accused))} ({threshold}; the chance of accusing "
                  f"any innocent user is at most {verdict.alpha:.3g})")
    else:
        out.print(f"Nobody accused: no issued model's fingerprint is significant ({threshold}).")
    for reason in verdict.review_reasons:
        out.print(f"[bold yellow]{_plain(reason)}[/]")


def _wide_console() -> Console:
    """A terminal keeps its width; piped output (a file, a log, another tool) is never cut to 80 columns."""
    return _Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
