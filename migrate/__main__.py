from migrate.quick import main

main()
