from handlers.entry.cli import main

raise SystemExit(main())
