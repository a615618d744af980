"""``python -m diffjax.convert IN OUT_DIR [--format=NAME] [--preset=NAME]``: see diffjax.convert."""
from diffjax import convert
from diffjax.convert import common


def main(argv: list[str] | None = None) -> None:
    common.command_line("python -m diffjax.convert", "Import a published checkpoint as a diffjax run directory.",
                        convert.convert, "the checkpoint file or folder", argv, presets=(),
                        preset_help="adm / score_sde: the architecture (default: from the file name)",
                        formats=convert.MODULES)


if __name__ == "__main__":
    main()
