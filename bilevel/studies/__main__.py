from bilevel.studies.core import main

raise SystemExit(main())
