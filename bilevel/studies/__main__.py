from bilevel.studies.cli import main

if __name__ == "__main__":      # the embedded Dask cluster spawns its worker processes
    raise SystemExit(main())
