package config_test

import (
	"context"
	"fmt"

	"github.com/switchboard-go/switchboard/config"
)

func ExampleLoad() {
	c, err := config.Load(context.Background(), config.Options{
		Service:  "identity",
		Realm:    "production",
		Defaults: map[string]any{"log": "info", "db": map[string]any{"pool": 5}},
		Environ:  []string{"SWITCHBOARD_CONFIG_DB__POOL=20"},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	v := c.Values()
	fmt.Println(v.String("log", ""), v.Source("log"))
	fmt.Println(v.Int("db.pool", 0), v.Source("db.pool"))
	// Output:
	// info default
	// 20 env:SWITCHBOARD_CONFIG_DB__POOL
}
