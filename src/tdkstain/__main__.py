from tdkstain.cli import main

raise SystemExit(main())
