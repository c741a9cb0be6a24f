"""The ``verifier`` group every command registers on, the documented exit codes and the guard that maps each
failure onto them (the exit codes: ``verifier.cli``)."""

from __future__ import annotations

import os
import sys

import click

EXIT_OK, EXIT_FOUND, EXIT_USAGE, EXIT_RUNTIME, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class UsageFailure(click.UsageError):
    """A bad input found by verifier (not by click's parser): one line, no usage banner, exit 2."""

    exit_code = EXIT_USAGE

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)


def run_guarded(action):
    """Run ``action``, mapping every failure onto the documented exit codes with a one-line message.

    Set ``VERIFIER_DEBUG=1`` to see the traceback of an unexpected error.
    """
    from verifier.calibration import CalibrationError
    from verifier.certificate.schema import CertificateFormatError
    from verifier.certificate.signing import SigningError
    from verifier.certificate.store import OutputFolderError
    from verifier.config import ConfigError
    from verifier.differential import DifferentialError
    from verifier.images import ImageInputError
    from verifier.models import ModelLoadError
    from verifier.policy import PolicyError
    from verifier.similarity import SimilarityError

    try:
        return action()
    except (ConfigError, ImageInputError, OutputFolderError) as error:
        raise UsageFailure(str(error)) from None
    except (CalibrationError, SigningError, PolicyError, DifferentialError) as error:  # a calibration that does not fit this model or config: a usage error
        raise UsageFailure(str(error)) from None
    except (ModelLoadError, SimilarityError, CertificateFormatError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_RUNTIME)
    except KeyboardInterrupt:
        click.echo("interrupted: finished certificates are kept; run the same command again to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException:
        raise
    except MemoryError:
        click.echo("error: out of memory; lower --batch-size or --generations", err=True)
        sys.exit(EXIT_RUNTIME)
    except Exception as error:  # anything unforeseen is a runtime error (3), never "memorization found" (1)
        if os.environ.get("VERIFIER_DEBUG") == "1":
            raise
        message = " ".join(str(error).split())[:500]
        click.echo(f"error: unexpected {type(error).__name__}: {message} (VERIFIER_DEBUG=1 shows the traceback)",
                   err=True)
        sys.exit(EXIT_RUNTIME)


class VerifierGroup(click.Group):
    """A click group whose Ctrl-C exits 130 (click's default prints 'Aborted!' and exits 1)."""

    def main(self, *args, **kwargs):
        kwargs.pop("standalone_mode", None)
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:
            click.echo("interrupted: finished certificates are kept; run the same command again to resume", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.ClickException as error:
            error.show()
            sys.exit(error.exit_code)
        except click.exceptions.Exit as done:
            sys.exit(done.exit_code)


@click.group(cls=VerifierGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="verifier")
def main():
    """Prompt-free memorization certificates for text-to-image diffusion models."""


def progress(message: str) -> None:
    click.echo(message, err=True)

