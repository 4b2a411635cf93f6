from llava.train.loop import main

main()
