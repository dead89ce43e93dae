from bilevel.report.core import main

raise SystemExit(main())
