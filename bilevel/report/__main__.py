from bilevel.report.cli import main

raise SystemExit(main())
