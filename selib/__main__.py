from selib.cli import main

raise SystemExit(main())
