from bilevel.studies.cli import main

raise SystemExit(main())
