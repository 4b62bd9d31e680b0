from appgateway.cli import main

raise SystemExit(main())
