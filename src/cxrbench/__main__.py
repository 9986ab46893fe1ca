from cxrbench.cli import main

raise SystemExit(main())
