from bilevel.verify.cli import main

raise SystemExit(main())
