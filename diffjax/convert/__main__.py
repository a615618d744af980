"""``python -m diffjax.convert IN OUT_DIR [--format=NAME] [--preset=NAME]``: see diffjax.convert."""
import argparse
import sys

from diffjax import convert


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffjax.convert",
                                     description="Import a published checkpoint as a diffjax run directory.")
    parser.add_argument("checkpoint", help="the checkpoint file or folder")
    parser.add_argument("out_dir", help="the run directory to write")
    parser.add_argument("--format", choices=sorted(convert.MODULES), help="default: told from the checkpoint")
    parser.add_argument("--preset", help="adm only: the architecture (default: from the file name)")
    args = parser.parse_args(argv)
    options = {"preset": args.preset} if args.preset else {}
    try:
        print(f"wrote {convert.convert(args.checkpoint, args.out_dir, args.format, **options)}")
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
