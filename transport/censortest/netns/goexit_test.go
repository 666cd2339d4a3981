package netns

import "runtime"

func runtimeGoexit() { runtime.Goexit() }
