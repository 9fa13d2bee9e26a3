from segnet.cli import main

raise SystemExit(main())
